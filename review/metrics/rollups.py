"""Daily action rollups: the dashboard's counts without scanning every action.

`ActionDay` holds one row per (UTC day, agent, workflow, action type, policy outcome).
Triggers on the action table append signed deltas to `ActionDelta` inside the writing
transaction — an insert with an outcome adds +1, an update that changes the outcome (the
engine records the action first and its policy outcome a moment later), the agent, the type,
the run or the time moves the count, a delete subtracts — so the rollup is exact for every
write path and a rolled-back write leaves nothing. `compact()` (beat, every minute) folds the
deltas into `ActionDay`; a reading sums both, so it is exact whether or not compaction ran.

An action without an outcome yet (proposed, not evaluated) is not counted; the live query
did count it in `total` — for the instant between the two writes of the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from .models import ActionDay, ActionDelta

KEY = ("day", "agent_id", "workflow", "action_type", "outcome")

# --- triggers (installed by migration 0002; `install_triggers` is also used by `rebuild`) --

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION metrics_action_delta() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.outcome <> '' THEN
        INSERT INTO metrics_actiondelta (day, agent_id, workflow, action_type, outcome, n)
        VALUES ((OLD.created_at AT TIME ZONE 'UTC')::date, OLD.agent_id,
                COALESCE((SELECT workflow FROM workflows_workflowrun WHERE id = OLD.run_id), ''),
                OLD.action_type, OLD.outcome, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.outcome <> '' THEN
        INSERT INTO metrics_actiondelta (day, agent_id, workflow, action_type, outcome, n)
        VALUES ((NEW.created_at AT TIME ZONE 'UTC')::date, NEW.agent_id,
                COALESCE((SELECT workflow FROM workflows_workflowrun WHERE id = NEW.run_id), ''),
                NEW.action_type, NEW.outcome, 1);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""
_COLUMNS = ("outcome", "agent_id", "action_type", "created_at", "run_id")
_PG_CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _COLUMNS)
_SQLITE_CHANGED = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _COLUMNS)
_TRIGGERS = ("rollup_ins", "rollup_upd", "rollup_del")


def _sqlite_insert(row: str, sign: int) -> str:
    # Only the trigger row names NEW/OLD and the sign +-1 are interpolated.
    return (
        "INSERT INTO metrics_actiondelta (day, agent_id, workflow, action_type, outcome, n) "  # noqa: S608
        f"SELECT date({row}.created_at), {row}.agent_id, COALESCE((SELECT workflow FROM "
        f"workflows_workflowrun WHERE id = {row}.run_id), ''), {row}.action_type, "
        f"{row}.outcome, {sign} WHERE {row}.outcome <> '';"
    )


def trigger_sql(vendor: str) -> list[str]:
    table = "workflows_action"
    columns = ", ".join(_COLUMNS)
    if vendor == "postgresql":
        run = "FOR EACH ROW {when} EXECUTE FUNCTION metrics_action_delta()"
        return [
            _PG_FUNCTION,
            f"CREATE TRIGGER {table}_rollup_ins AFTER INSERT ON {table} "
            + run.format(when="WHEN (NEW.outcome <> '')"),
            f"CREATE TRIGGER {table}_rollup_upd AFTER UPDATE OF {columns} ON {table} "
            + run.format(when=f"WHEN ({_PG_CHANGED})"),
            f"CREATE TRIGGER {table}_rollup_del AFTER DELETE ON {table} "
            + run.format(when="WHEN (OLD.outcome <> '')"),
        ]
    if vendor == "sqlite":
        return [
            f"CREATE TRIGGER {table}_rollup_ins AFTER INSERT ON {table} "
            f"WHEN NEW.outcome <> '' BEGIN {_sqlite_insert('NEW', 1)} END",
            f"CREATE TRIGGER {table}_rollup_upd AFTER UPDATE OF {columns} ON {table} "
            f"WHEN {_SQLITE_CHANGED} BEGIN {_sqlite_insert('OLD', -1)} "
            f"{_sqlite_insert('NEW', 1)} END",
            f"CREATE TRIGGER {table}_rollup_del AFTER DELETE ON {table} "
            f"WHEN OLD.outcome <> '' BEGIN {_sqlite_insert('OLD', -1)} END",
        ]
    raise RuntimeError(f"no rollup triggers for {vendor}")


def drop_trigger_sql(vendor: str) -> list[str]:
    table = "workflows_action"
    if vendor == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {table}_{t} ON {table}" for t in _TRIGGERS] + [
            "DROP FUNCTION IF EXISTS metrics_action_delta()"
        ]
    return [f"DROP TRIGGER IF EXISTS {table}_{t}" for t in _TRIGGERS]


_DAY_SQL = {
    "postgresql": "(a.created_at AT TIME ZONE 'UTC')::date",
    "sqlite": "date(a.created_at)",
}

BACKFILL_SQL = """
INSERT INTO metrics_actionday (day, agent_id, workflow, action_type, outcome, n)
SELECT {day}, a.agent_id, COALESCE(r.workflow, ''), a.action_type, a.outcome, COUNT(*)
FROM workflows_action a LEFT JOIN workflows_workflowrun r ON r.id = a.run_id
WHERE a.outcome <> ''
GROUP BY {day}, a.agent_id, COALESCE(r.workflow, ''), a.action_type, a.outcome
"""


def backfill(cursor: Any, vendor: str) -> None:
    """Count every existing action into `ActionDay` (which must be empty)."""
    cursor.execute(BACKFILL_SQL.format(day=_DAY_SQL[vendor]))


# --- maintenance ----------------------------------------------------------------------------

_PG_COMPACT = """
WITH moved AS (
    DELETE FROM metrics_actiondelta
    RETURNING day, agent_id, workflow, action_type, outcome, n
)
INSERT INTO metrics_actionday (day, agent_id, workflow, action_type, outcome, n)
SELECT day, agent_id, workflow, action_type, outcome, SUM(n) FROM moved
GROUP BY day, agent_id, workflow, action_type, outcome
ON CONFLICT (day, agent_id, workflow, action_type, outcome)
DO UPDATE SET n = metrics_actionday.n + EXCLUDED.n
"""
_SQLITE_COMPACT = """
INSERT INTO metrics_actionday (day, agent_id, workflow, action_type, outcome, n)
SELECT day, agent_id, workflow, action_type, outcome, SUM(n) FROM metrics_actiondelta
WHERE id <= %s GROUP BY day, agent_id, workflow, action_type, outcome
ON CONFLICT (day, agent_id, workflow, action_type, outcome)
DO UPDATE SET n = metrics_actionday.n + excluded.n
"""
# Any other PostgreSQL session holding this lock is compacting: skip, don't queue behind it.
_LOCK_KEY = 0x6361_6C72  # "calr"


def compact() -> int:
    """Fold the deltas into `ActionDay`; returns how many rollup rows it wrote.

    PostgreSQL: one statement deletes the deltas and adds exactly the deleted rows, so a
    delta committed meanwhile is left for the next call, never lost or counted twice."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK_KEY])
            if not cursor.fetchone()[0]:
                return 0
            cursor.execute(_PG_COMPACT)
            written = max(0, cursor.rowcount)
            cursor.execute("DELETE FROM metrics_actionday WHERE n = 0")
            return written
        last = ActionDelta.objects.order_by("-id").values_list("id", flat=True).first()
        if last is None:
            return 0
        # SQLite transactions here are IMMEDIATE: no other writer until this commits.
        cursor.execute(_SQLITE_COMPACT, [last])
        written = max(0, cursor.rowcount)
        ActionDelta.objects.filter(id__lte=last).delete()
        cursor.execute("DELETE FROM metrics_actionday WHERE n = 0")
        return written


def rebuild() -> int:
    """Recount `ActionDay` from the action table (after a restore, or to check the
    triggers); returns the number of rollup rows."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Hold writers off the action table so the recount and the triggers agree.
            cursor.execute("LOCK TABLE workflows_action IN SHARE MODE")
        ActionDelta.objects.all().delete()
        ActionDay.objects.all().delete()
        backfill(cursor, connection.vendor)
        return ActionDay.objects.count()


# --- reading --------------------------------------------------------------------------------


def covers(since: datetime, until: datetime, now: datetime | None = None) -> bool:
    """Whether whole UTC days answer for [since, until): since at a midnight, and until at a
    midnight or 'now' (today's row holds exactly what exists so far)."""
    now = now or timezone.now()
    since_utc, until_utc = since.astimezone(UTC), until.astimezone(UTC)
    return since_utc.time() == time() and (
        until_utc.time() == time() or until_utc >= now - timedelta(seconds=5)
    )


def counts(
    *,
    since: date,
    until: date,
    workflow: str = "",
    agent_ids: Iterable[int] | None = None,
    action_type: str = "",
) -> dict[tuple[Any, ...], int]:
    """Action counts per KEY for days since..until inclusive, rollup and pending deltas."""
    totals: dict[tuple[Any, ...], int] = {}
    for model in (ActionDay, ActionDelta):
        qs = model.objects.filter(day__gte=since, day__lte=until)
        if workflow:
            qs = qs.filter(workflow=workflow)
        if agent_ids is not None:
            qs = qs.filter(agent_id__in=list(agent_ids))
        if action_type:
            qs = qs.filter(action_type=action_type)
        for row in qs.values(*KEY).annotate(total=Sum("n")).order_by():
            key = tuple(row[k] for k in KEY)
            totals[key] = totals.get(key, 0) + int(row["total"])
    return {k: v for k, v in totals.items() if v}
