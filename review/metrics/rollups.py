"""Daily rollups: the dashboard's counts without scanning every action, run and model call.

Each rollup is a pair of tables (review/metrics/models.py): `<X>Day`, one row per UTC day,
agent, workflow and the rollup's own keys, and `<X>Delta`, signed changes. Row triggers on
the source table append the deltas inside the writing transaction — an insert adds, an
update of a counted column (a run's status, an action's policy outcome: the engine records
an action first and its outcome a moment later) subtracts the old row and adds the new, a
delete subtracts — so a rollup is exact for every write path (the engine, the API, the
admin, bulk SQL) and a rolled-back write leaves nothing. `compact()` (beat, every minute)
folds the deltas into the day table; `read()` sums both, so it is exact either way.

What is counted: actions once they have a policy outcome (the proposal row exists without
one only inside the transaction that evaluates it); runs by their current status, on the
day they were created; model calls made for a run, on that run's day (calls outside a run
are not in the cost per completed task); human decisions by verdict (an approve with an
edited payload counts as `edited`) and by the action's confidence decile, on the day they
were made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Sum
from django.utils import timezone

from .models import (
    ActionDay,
    ActionDelta,
    DecisionDay,
    DecisionDelta,
    ModelCallDay,
    ModelCallDelta,
    RunDay,
    RunDelta,
)

_RUN = "(SELECT {col} FROM workflows_workflowrun WHERE id = {{r}}.run_id)"
# A decision's action (and its run), through its escalation.
_ESCALATED = (
    "(SELECT {col} FROM escalations_escalation e JOIN workflows_action a ON a.id = e.action_id "
    "LEFT JOIN workflows_workflowrun w ON w.id = a.run_id WHERE e.id = {{r}}.escalation_id)"
)
# SQL, or SQL per database vendor where they differ.
SQL = str | dict[str, str]


def _vendor_sql(sql: SQL, vendor: str) -> str:
    return sql if isinstance(sql, str) else sql[vendor]


@dataclass(frozen=True)
class Rollup:
    name: str
    source: str  # the table whose rows are counted
    day_model: type[models.Model]
    delta_model: type[models.Model]
    timestamp: str  # SQL for the row's time, "{r}" standing for NEW or OLD
    keys: tuple[tuple[str, SQL], ...]  # (rollup column, SQL), after day
    values: tuple[tuple[str, str], ...]  # (rollup column, SQL), summed
    condition: str  # SQL: whether the row counts at all
    watched: tuple[str, ...]  # source columns whose change moves a row between keys

    @property
    def day_table(self) -> str:
        return str(self.day_model._meta.db_table)

    @property
    def delta_table(self) -> str:
        return str(self.delta_model._meta.db_table)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return ("day", *(k for k, _ in self.keys))

    @property
    def value_columns(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.values)


ACTIONS = Rollup(
    name="action",
    source="workflows_action",
    day_model=ActionDay,
    delta_model=ActionDelta,
    timestamp="{r}.created_at",
    keys=(
        ("agent_id", "{r}.agent_id"),
        ("workflow", f"COALESCE({_RUN.format(col='workflow')}, '')"),
        ("action_type", "{r}.action_type"),
        ("outcome", "{r}.outcome"),
    ),
    values=(("n", "1"),),
    condition="{r}.outcome <> ''",
    watched=("outcome", "agent_id", "action_type", "created_at", "run_id"),
)
RUNS = Rollup(
    name="run",
    source="workflows_workflowrun",
    day_model=RunDay,
    delta_model=RunDelta,
    timestamp="{r}.created_at",
    keys=(("agent_id", "{r}.agent_id"), ("workflow", "{r}.workflow"), ("status", "{r}.status")),
    values=(("n", "1"),),
    condition="{r}.id IS NOT NULL",
    watched=("status", "agent_id", "workflow", "created_at"),
)
MODEL_CALLS = Rollup(
    name="model_call",
    source="prompts_modelcall",
    day_model=ModelCallDay,
    delta_model=ModelCallDelta,
    timestamp=_RUN.format(col="created_at"),
    keys=(("agent_id", _RUN.format(col="agent_id")), ("workflow", _RUN.format(col="workflow"))),
    values=(
        ("n", "1"),
        ("cost_usd", "COALESCE({r}.cost_usd, 0)"),
        ("input_tokens", "{r}.input_tokens"),
        ("output_tokens", "{r}.output_tokens"),
    ),
    condition="{r}.run_id IS NOT NULL",
    watched=("run_id", "cost_usd", "input_tokens", "output_tokens"),
)
_BIN = "(SELECT a.confidence FROM escalations_escalation e JOIN workflows_action a "
_BIN += "ON a.id = e.action_id WHERE e.id = {r}.escalation_id) * 10"
DECISIONS = Rollup(
    name="decision",
    source="escalations_decision",
    day_model=DecisionDay,
    delta_model=DecisionDelta,
    timestamp="{r}.created_at",
    keys=(
        ("agent_id", _ESCALATED.format(col="a.agent_id")),
        ("workflow", f"COALESCE({_ESCALATED.format(col='w.workflow')}, '')"),
        ("action_type", _ESCALATED.format(col="a.action_type")),
        ("team_id", "(SELECT team_id FROM escalations_escalation WHERE id = {r}.escalation_id)"),
        (
            "kind",
            "CASE WHEN {r}.verdict = 'approve' AND {r}.edited_payload IS NULL THEN 'approved' "
            "WHEN {r}.verdict = 'approve' THEN 'edited' ELSE {r}.verdict END",
        ),
        (
            "bin",
            {
                "postgresql": f"LEAST(GREATEST(FLOOR({_BIN}), 0), 9)",
                # CAST truncates, which is FLOOR for a confidence >= 0.
                "sqlite": f"min(max(CAST({_BIN} AS INTEGER), 0), 9)",
            },
        ),
    ),
    values=(("n", "1"),),
    condition="{r}.id IS NOT NULL",
    watched=("verdict", "edited_payload", "created_at", "escalation_id"),
)
ROLLUPS = (ACTIONS, RUNS, MODEL_CALLS, DECISIONS)

# Everything below interpolates only the constant table and column names and SQL fragments
# defined above (and NEW/OLD, +/-); no input reaches these statements.


def _day_sql(vendor: str, timestamp: str) -> str:
    if vendor == "postgresql":
        return f"(({timestamp}) AT TIME ZONE 'UTC')::date"
    return f"date({timestamp})"


def _delta_insert(rollup: Rollup, vendor: str, row: str, sign: str) -> str:
    def fill(sql: SQL) -> str:
        return _vendor_sql(sql, vendor).replace("{r}", row)

    columns = ", ".join((*rollup.key_columns, *rollup.value_columns))
    selected = ", ".join(
        (
            _day_sql(vendor, fill(rollup.timestamp)),
            *(fill(sql) for _, sql in rollup.keys),
            *(f"{sign}({fill(sql)})" for _, sql in rollup.values),
        )
    )
    return (
        f"INSERT INTO {rollup.delta_table} ({columns}) "
        f"SELECT {selected} WHERE {fill(rollup.condition)};"
    )


def _trigger_names(rollup: Rollup) -> tuple[str, str, str]:
    base = f"{rollup.source}_{rollup.name}_rollup"
    return f"{base}_ins", f"{base}_upd", f"{base}_del"


def trigger_sql(vendor: str, rollups: Sequence[Rollup] = ROLLUPS) -> list[str]:
    statements = []
    for rollup in rollups:
        ins, upd, delete = _trigger_names(rollup)
        watched = ", ".join(rollup.watched)
        if vendor == "postgresql":
            function = f"metrics_{rollup.name}_delta"
            changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in rollup.watched)
            statements += [
                f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$\n"
                "BEGIN\n"
                "    IF TG_OP IN ('UPDATE', 'DELETE') THEN\n"
                f"        {_delta_insert(rollup, vendor, 'OLD', '-')}\n"
                "    END IF;\n"
                "    IF TG_OP IN ('INSERT', 'UPDATE') THEN\n"
                f"        {_delta_insert(rollup, vendor, 'NEW', '')}\n"
                "    END IF;\n"
                "    RETURN NULL;\n"
                "END\n"
                "$$ LANGUAGE plpgsql;",
                f"CREATE TRIGGER {ins} AFTER INSERT ON {rollup.source} FOR EACH ROW "
                f"EXECUTE FUNCTION {function}()",
                f"CREATE TRIGGER {upd} AFTER UPDATE OF {watched} ON {rollup.source} FOR EACH ROW "
                f"WHEN ({changed}) EXECUTE FUNCTION {function}()",
                f"CREATE TRIGGER {delete} AFTER DELETE ON {rollup.source} FOR EACH ROW "
                f"EXECUTE FUNCTION {function}()",
            ]
        elif vendor == "sqlite":
            changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in rollup.watched)
            old = _delta_insert(rollup, vendor, "OLD", "-")
            new = _delta_insert(rollup, vendor, "NEW", "")
            statements += [
                f"CREATE TRIGGER {ins} AFTER INSERT ON {rollup.source} BEGIN {new} END",
                f"CREATE TRIGGER {upd} AFTER UPDATE OF {watched} ON {rollup.source} "
                f"WHEN {changed} BEGIN {old} {new} END",
                f"CREATE TRIGGER {delete} AFTER DELETE ON {rollup.source} BEGIN {old} END",
            ]
        else:
            raise RuntimeError(f"no rollup triggers for {vendor}")
    return statements


def drop_trigger_sql(vendor: str, rollups: Sequence[Rollup] = ROLLUPS) -> list[str]:
    statements = []
    for rollup in rollups:
        for name in _trigger_names(rollup):
            on = f" ON {rollup.source}" if vendor == "postgresql" else ""
            statements.append(f"DROP TRIGGER IF EXISTS {name}{on}")
        if vendor == "postgresql":
            statements.append(f"DROP FUNCTION IF EXISTS metrics_{rollup.name}_delta()")
    return statements


def backfill(cursor: Any, vendor: str, rollup: Rollup) -> None:
    """Count every existing source row into the (empty) day table."""

    def fill(sql: SQL) -> str:
        return _vendor_sql(sql, vendor).replace("{r}", "s")

    keys = [_day_sql(vendor, fill(rollup.timestamp)), *(fill(sql) for _, sql in rollup.keys)]
    values = ", ".join(f"SUM({fill(sql)})" for _, sql in rollup.values)
    columns = ", ".join((*rollup.key_columns, *rollup.value_columns))
    cursor.execute(
        f"INSERT INTO {rollup.day_table} ({columns}) "  # noqa: S608
        f"SELECT {', '.join(keys)}, {values} FROM {rollup.source} s "
        f"WHERE {fill(rollup.condition)} "
        f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}"
    )


# --- maintenance ----------------------------------------------------------------------------

# Any other PostgreSQL session holding this lock is compacting: skip, don't queue behind it.
_LOCK_KEY = 0x6361_6C72  # "calr"


def _compact_sql(rollup: Rollup, vendor: str) -> str:
    keys = ", ".join(rollup.key_columns)
    columns = ", ".join((*rollup.key_columns, *rollup.value_columns))
    sums = ", ".join(f"SUM({v})" for v in rollup.value_columns)
    added = ", ".join(f"{v} = {rollup.day_table}.{v} + excluded.{v}" for v in rollup.value_columns)
    upsert = f"ON CONFLICT ({keys}) DO UPDATE SET {added}"
    if vendor == "postgresql":
        # One statement deletes the deltas and adds exactly the deleted rows: a delta that
        # commits meanwhile is left for the next call, never lost or counted twice.
        return (
            f"WITH moved AS (DELETE FROM {rollup.delta_table} RETURNING {columns}) "  # noqa: S608
            f"INSERT INTO {rollup.day_table} ({columns}) SELECT {keys}, {sums} FROM moved "
            f"GROUP BY {keys} {upsert}"
        )
    return (
        f"INSERT INTO {rollup.day_table} ({columns}) SELECT {keys}, {sums} "  # noqa: S608
        f"FROM {rollup.delta_table} WHERE id <= %s GROUP BY {keys} {upsert}"
    )


def _empty_rows_sql(rollup: Rollup) -> str:
    return f"DELETE FROM {rollup.day_table} WHERE n = 0"  # noqa: S608


def compact() -> int:
    """Fold every rollup's deltas into its day table; returns the day rows written."""
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK_KEY])
            if not cursor.fetchone()[0]:
                return 0
        for rollup in ROLLUPS:
            if connection.vendor == "postgresql":
                cursor.execute(_compact_sql(rollup, "postgresql"))
                written += max(0, cursor.rowcount)
            else:
                # SQLite transactions here are IMMEDIATE: no other writer until this commits.
                manager = rollup.delta_model._default_manager
                last = manager.order_by("-pk").values_list("pk", flat=True).first()
                if last is None:
                    continue
                cursor.execute(_compact_sql(rollup, connection.vendor), [last])
                written += max(0, cursor.rowcount)
                manager.filter(pk__lte=last).delete()
            cursor.execute(_empty_rows_sql(rollup))
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        # The folded deltas are dead rows until vacuumed, and every reading scans the delta
        # tables: reclaim them now (milliseconds for the few thousand rows of a minute),
        # not whenever autovacuum next looks.
        with connection.cursor() as cursor:
            for rollup in ROLLUPS:
                cursor.execute(f"VACUUM {rollup.delta_table}")
    return written


def rebuild() -> int:
    """Recount every rollup from its source table (after a restore, or to check the
    triggers); returns the number of day rows."""
    rows = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for rollup in ROLLUPS:
            if connection.vendor == "postgresql":
                # Hold writers off so the recount and the triggers agree.
                cursor.execute(f"LOCK TABLE {rollup.source} IN SHARE MODE")
            rollup.delta_model._default_manager.all().delete()
            rollup.day_model._default_manager.all().delete()
            backfill(cursor, connection.vendor, rollup)
            rows += rollup.day_model._default_manager.count()
    return rows


# --- reading --------------------------------------------------------------------------------


def covers(since: datetime, until: datetime, now: datetime | None = None) -> bool:
    """Whether whole UTC days answer for [since, until): since at a midnight, and until at a
    midnight or 'now' (today's row holds exactly what exists so far)."""
    now = now or timezone.now()
    since_utc, until_utc = since.astimezone(UTC), until.astimezone(UTC)
    return since_utc.time() == time() and (
        until_utc.time() == time() or until_utc >= now - timedelta(seconds=5)
    )


def read(
    rollup: Rollup,
    *,
    since: date,
    until: date,
    workflow: str = "",
    agent_ids: Iterable[int] | None = None,
    team_ids: Iterable[int] | None = None,
    **filters: str,
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Sums per key (day first, then the rollup's keys) for days since..until inclusive:
    the day table plus the deltas not folded in yet. Zero rows are left out."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    values = rollup.value_columns
    for model in (rollup.day_model, rollup.delta_model):
        qs = model._default_manager.filter(day__gte=since, day__lte=until)
        if workflow:
            qs = qs.filter(workflow=workflow)
        if agent_ids is not None:
            qs = qs.filter(agent_id__in=list(agent_ids))
        if team_ids is not None:
            qs = qs.filter(team_id__in=list(team_ids))
        for field, value in filters.items():
            if value:
                qs = qs.filter(**{field: value})
        rows = (
            qs.values(*rollup.key_columns)
            .annotate(**{f"sum_{v}": Sum(v) for v in values})
            .order_by()
        )
        for row in rows:
            key = tuple(row[k] for k in rollup.key_columns)
            acc = totals.setdefault(key, [0] * len(values))
            for i, v in enumerate(values):
                acc[i] += row[f"sum_{v}"] or 0
    return {k: tuple(v) for k, v in totals.items() if any(v)}


def counts(
    *,
    since: date,
    until: date,
    workflow: str = "",
    agent_ids: Iterable[int] | None = None,
    action_type: str = "",
) -> dict[tuple[Any, ...], int]:
    """Action counts per (day, agent id, workflow, action type, outcome)."""
    rows = read(
        ACTIONS,
        since=since,
        until=until,
        workflow=workflow,
        agent_ids=agent_ids,
        action_type=action_type,
    )
    return {k: int(v[0]) for k, v in rows.items()}
