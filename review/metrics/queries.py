"""The numbers, aggregated in SQL. Read-only: nothing here writes.

Every query takes a `Scope` (period, optional workflow / agent / action type, and the teams
the viewer may see) so the dashboard, the alerts and the Prometheus endpoint agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Floor, Greatest, Least, TruncDate

from escalations.models import AgentProfile, Decision, Escalation, EscalationStatus, Verdict
from workflows.models import (
    Action,
    DeadLetter,
    Outcome,
    OutcomeQuality,
    PolicyOutcome,
    RunStatus,
    WorkflowRun,
)
from workflows.prompts.models import ModelCall

from . import rollups

APPROVED, EDITED = "approved", "edited"  # approved unchanged; approved after an edit


@dataclass(frozen=True)
class DecisionCount:
    day: date
    agent_id: int
    workflow: str
    action_type: str
    kind: str  # "approved" (unchanged), "edited", "reject", "respond"
    bin: int  # confidence decile, 0-9
    n: int


@dataclass(frozen=True)
class Scope:
    since: datetime
    until: datetime
    workflow: str = ""
    agent_id: int | None = None
    action_type: str = ""
    team_ids: tuple[int, ...] | None = None  # None: every team (admins)
    # Rollup readings already made through this scope (one dashboard request reads the
    # action counts for the figures, the trend and the breakdowns).
    _read: dict[Any, Any] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    def run_q(self, prefix: str = "") -> Q:
        q = Q(**{f"{prefix}created_at__gte": self.since, f"{prefix}created_at__lt": self.until})
        if self.workflow:
            q &= Q(**{f"{prefix}workflow": self.workflow})
        if self.agent_id:
            q &= Q(**{f"{prefix}agent_id": self.agent_id})
        if self.team_ids is not None:
            q &= Q(**{f"{prefix}agent__team_id__in": self.team_ids})
        return q

    def runs(self) -> QuerySet[WorkflowRun]:
        return WorkflowRun.objects.filter(self.run_q())

    def action_q(self, prefix: str = "") -> Q:
        """The scope's actions as a condition on `prefix` (e.g. "action__" from outcomes):
        a join, where `action__in=actions()` would make PostgreSQL scan every action."""
        q = Q(**{f"{prefix}created_at__gte": self.since, f"{prefix}created_at__lt": self.until})
        if self.workflow:
            q &= Q(**{f"{prefix}run__workflow": self.workflow})
        if self.agent_id:
            q &= Q(**{f"{prefix}agent_id": self.agent_id})
        if self.action_type:
            q &= Q(**{f"{prefix}action_type": self.action_type})
        if self.team_ids is not None:
            q &= Q(**{f"{prefix}agent__team_id__in": self.team_ids})
        return q

    def actions(self) -> QuerySet[Action]:
        return Action.objects.filter(self.action_q())

    def _memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._read:
            self._read[key] = compute()
        return self._read[key]

    def rolled(self, rollup: rollups.Rollup, **filters: str) -> dict[tuple[Any, ...], Any] | None:
        """Sums per key (day, agent id, workflow, the rollup's own keys) from a daily rollup,
        or None when the period is not made of whole days (then the source is scanned)."""
        if not rollups.covers(self.since, self.until):
            return None
        key = (rollup.name, tuple(sorted(filters.items())))
        return dict(self._memo(key, lambda: self._rolled(rollup, **filters)))

    def _rolled(self, rollup: rollups.Rollup, **filters: str) -> dict[tuple[Any, ...], Any]:
        agent_ids: list[int] | None = [self.agent_id] if self.agent_id else None
        team_ids = None
        if rollup is rollups.DECISIONS:
            # A decision belongs to the team its escalation went to, as in `decisions()`.
            team_ids = self.team_ids
        elif self.team_ids is not None:
            team_agents = AgentProfile.objects.filter(team_id__in=self.team_ids)
            if self.agent_id:
                team_agents = team_agents.filter(pk=self.agent_id)
            agent_ids = list(team_agents.values_list("pk", flat=True))
        return rollups.read(
            rollup,
            since=self.since.astimezone(UTC).date(),
            until=self.until.astimezone(UTC).date(),
            workflow=self.workflow,
            agent_ids=agent_ids,
            team_ids=team_ids,
            **filters,
        )

    # Each reading below is keyed like its rollup: from the rollup over whole days, else from
    # one grouped scan of the source, so every figure has one code path either way.

    def action_counts(self) -> dict[tuple[Any, ...], int]:
        """Actions with a policy outcome per (day, agent id, workflow, action type, outcome)."""
        rows = self.rolled(rollups.ACTIONS, action_type=self.action_type)
        if rows is not None:
            return {k: int(v[0]) for k, v in rows.items()}
        return self._memo("action_scan", self._scan_actions)

    def _scan_actions(self) -> dict[tuple[Any, ...], int]:
        keys = ("day", "agent_id", "run__workflow", "action_type", "outcome")
        grouped = (
            self.actions()
            .exclude(outcome="")
            .annotate(day=TruncDate("created_at"))
            .values(*keys)
            .annotate(n=Count("pk"))
            .order_by()
        )
        return {
            (r["day"], r["agent_id"], r["run__workflow"] or "", r["action_type"], r["outcome"]): r[
                "n"
            ]
            for r in grouped
        }

    def run_counts(self) -> dict[tuple[Any, ...], int]:
        """Runs per (day, agent id, workflow, status)."""
        rows = self.rolled(rollups.RUNS)
        if rows is not None:
            return {k: int(v[0]) for k, v in rows.items()}
        return self._memo("run_scan", self._scan_runs)

    def _scan_runs(self) -> dict[tuple[Any, ...], int]:
        grouped = (
            self.runs()
            .annotate(day=TruncDate("created_at"))
            .values("day", "agent_id", "workflow", "status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        return {(r["day"], r["agent_id"], r["workflow"], r["status"]): r["n"] for r in grouped}

    def model_call_sums(self) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        """(calls, cost, input tokens, output tokens) per (day of the run, agent id, workflow)."""
        rows = self.rolled(rollups.MODEL_CALLS)
        if rows is not None:
            return rows
        return self._memo("model_call_scan", self._scan_model_calls)

    def _scan_model_calls(self) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        grouped = (
            ModelCall.objects.filter(self.run_q("run__"))
            .annotate(day=TruncDate("run__created_at"))
            .values("day", "run__agent_id", "run__workflow")
            .annotate(
                n=Count("pk"),
                cost=Sum("cost_usd"),
                input_tokens=Sum("input_tokens"),
                output_tokens=Sum("output_tokens"),
            )
            .order_by()
        )
        return {
            (r["day"], r["run__agent_id"], r["run__workflow"]): (
                r["n"],
                r["cost"] or 0,
                r["input_tokens"] or 0,
                r["output_tokens"] or 0,
            )
            for r in grouped
        }

    def decision_counts(self) -> list[DecisionCount]:
        """People's decisions counted per (day, agent id, workflow, action type, kind —
        approved unchanged / edited / reject / respond — and confidence decile): from the
        daily rollup over whole days, else in one grouped query."""
        return list(self._memo("decision_counts", self._decision_counts))

    def _decision_counts(self) -> list[DecisionCount]:
        rows = self.rolled(rollups.DECISIONS, action_type=self.action_type)
        if rows is not None:
            return [
                DecisionCount(k[0], k[1], k[2], k[3], k[5], int(k[6]), int(v[0]))
                for k, v in rows.items()
            ]
        confidence = F("escalation__action__confidence")
        grouped = (
            self.decisions()
            .annotate(
                day=TruncDate("created_at"),
                kind=Case(
                    When(
                        verdict=Verdict.APPROVE, edited_payload__isnull=True, then=Value(APPROVED)
                    ),
                    When(verdict=Verdict.APPROVE, then=Value(EDITED)),
                    default=F("verdict"),
                ),
                bin=Least(Greatest(Floor(confidence * BINS), Value(0.0)), Value(float(BINS - 1))),
            )
            .values(
                "day",
                "escalation__action__agent_id",
                "escalation__action__run__workflow",
                "escalation__action__action_type",
                "kind",
                "bin",
            )
            .annotate(n=Count("pk"))
            .order_by()
        )
        return [
            DecisionCount(
                r["day"],
                r["escalation__action__agent_id"],
                r["escalation__action__run__workflow"] or "",
                r["escalation__action__action_type"],
                r["kind"],
                int(r["bin"]),
                r["n"],
            )
            for r in grouped
        ]

    def decisions(self) -> QuerySet[Decision]:
        qs = Decision.objects.filter(created_at__gte=self.since, created_at__lt=self.until)
        if self.workflow:
            qs = qs.filter(escalation__action__run__workflow=self.workflow)
        if self.agent_id:
            qs = qs.filter(escalation__action__agent_id=self.agent_id)
        if self.action_type:
            qs = qs.filter(escalation__action__action_type=self.action_type)
        if self.team_ids is not None:
            qs = qs.filter(escalation__team_id__in=self.team_ids)
        return qs

    def escalations(self) -> QuerySet[Escalation]:
        qs = Escalation.objects.filter(created_at__gte=self.since, created_at__lt=self.until)
        if self.workflow:
            qs = qs.filter(action__run__workflow=self.workflow)
        if self.agent_id:
            qs = qs.filter(action__agent_id=self.agent_id)
        if self.action_type:
            qs = qs.filter(action__action_type=self.action_type)
        if self.team_ids is not None:
            qs = qs.filter(team_id__in=self.team_ids)
        return qs


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval for a proportion: honest at small counts, never outside 0-1."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --- headline figures ----------------------------------------------------------------------


def run_figures(scope: Scope) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for key, n in scope.run_counts().items():
        by_status[key[3]] = by_status.get(key[3], 0) + n
    agg: dict[str, Any] = {
        "total": sum(by_status.values()),
        **{s: by_status.get(s, 0) for s in ("succeeded", "failed", "cancelled", "waiting")},
    }
    finished = agg["succeeded"] + agg["failed"] + agg["cancelled"]
    # A run succeeds only when every step met its success criteria, so "succeeded" is
    # "finished and met its objective": the completion rate's numerator.
    agg["completion_rate"] = rate(agg["succeeded"], finished)
    agg["finished"] = finished
    agg["dead_lettered"] = DeadLetter.objects.filter(scope.run_q("run__")).count()
    return agg


def _outcome_totals(counts: dict[tuple[Any, ...], int], group: int | None) -> dict[Any, Any]:
    """Sum rollup counts by one KEY position (None: everything) into total/auto/review/block."""
    out: dict[Any, dict[str, int]] = {}
    for key, n in counts.items():
        row = out.setdefault(
            None if group is None else key[group], {"total": 0, "auto": 0, "review": 0, "block": 0}
        )
        row["total"] += n
        if key[4] in row:
            row[key[4]] += n
    return out


def action_figures(scope: Scope) -> dict[str, Any]:
    agg: dict[str, Any] = _outcome_totals(scope.action_counts(), None).get(
        None, {"total": 0, "auto": 0, "review": 0, "block": 0}
    )
    agg["escalation_rate"] = rate(agg["review"], agg["total"])
    agg["autonomous_share"] = rate(agg["auto"], agg["total"])
    agg["block_rate"] = rate(agg["block"], agg["total"])
    return agg


def decision_figures(scope: Scope) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for c in scope.decision_counts():
        kinds[c.kind] = kinds.get(c.kind, 0) + c.n
    agg: dict[str, Any] = {
        "total": sum(kinds.values()),
        "approved": kinds.get(APPROVED, 0),
        "edited": kinds.get(EDITED, 0),
        "rejected": kinds.get(Verdict.REJECT, 0),
        "responded": kinds.get(Verdict.RESPOND, 0),
    }
    n = agg["total"]
    agg["approval_rate"] = rate(agg["approved"], n)
    agg["edit_rate"] = rate(agg["edited"], n)
    agg["reject_rate"] = rate(agg["rejected"] + agg["responded"], n)
    # A person changing or refusing what the agent proposed: autonomy mis-calibration signal.
    agg["override_rate"] = rate(agg["edited"] + agg["rejected"] + agg["responded"], n)
    agg.update(decision_latency(scope))
    return agg


def decision_latency(scope: Scope) -> dict[str, float | None]:
    qs = scope.decisions().annotate(
        wait=ExpressionWrapper(
            F("created_at") - F("escalation__created_at"), output_field=DurationField()
        )
    )
    if connection.vendor == "postgresql":
        sql, params = qs.values("wait").query.sql_with_params()
        with connection.cursor() as cursor:
            # `sql` is Django's own compiled query with its parameters kept separate.
            percentiles = (
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM wait)), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM wait)) "
                "FROM (%s) AS d"
            )
            cursor.execute(percentiles % sql, params)
            p50, p95 = cursor.fetchone()
        return {"latency_p50_s": p50, "latency_p95_s": p95}
    waits = sorted(w.total_seconds() for w in qs.values_list("wait", flat=True) if w is not None)
    if not waits:
        return {"latency_p50_s": None, "latency_p95_s": None}

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, max(0, math.ceil(p * len(waits)) - 1))]

    return {"latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95)}


def sla_figures(scope: Scope, now: datetime) -> dict[str, int]:
    esc = scope.escalations().filter(sla_due_at__isnull=False)
    return esc.aggregate(
        with_sla=Count("pk"),
        breached=Count(
            "pk",
            filter=Q(status=EscalationStatus.EXPIRED)
            | Q(decided_at__gt=F("sla_due_at"))
            | Q(decided_at__isnull=True, sla_due_at__lt=now),
        ),
    )


def cost_figures(scope: Scope, succeeded: int) -> dict[str, Any]:
    sums = [sum(v[i] for v in scope.model_call_sums().values()) for i in range(4)]
    agg = dict(zip(("calls", "cost", "input_tokens", "output_tokens"), sums, strict=True))
    tokens = (agg["input_tokens"] or 0) + (agg["output_tokens"] or 0)
    return {
        "cost_usd": float(agg["cost"] or 0),
        "tokens": tokens,
        "model_calls": agg["calls"],
        "cost_per_completed": float(agg["cost"] or 0) / succeeded if succeeded else None,
        "tokens_per_completed": tokens / succeeded if succeeded else None,
    }


# --- trends and breakdowns -------------------------------------------------------------------


def daily_trend(scope: Scope) -> list[dict[str, Any]]:
    """Per day: runs, completion, escalation rate, approval rate."""
    days: dict[date, dict[str, Any]] = {}
    start = scope.since.date()
    for i in range((scope.until.date() - start).days + 1):
        d = start + timedelta(days=i)
        days[d] = {
            "day": d,
            "runs": 0,
            "succeeded": 0,
            "finished": 0,
            "actions": 0,
            "escalated": 0,
            "decisions": 0,
            "approved": 0,
        }
    finished_statuses = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    for key, n in scope.run_counts().items():
        if key[0] in days:
            on_day = days[key[0]]
            on_day["runs"] += n
            on_day["succeeded"] += n if key[3] == RunStatus.SUCCEEDED else 0
            on_day["finished"] += n if key[3] in finished_statuses else 0
    for day, totals in _outcome_totals(scope.action_counts(), 0).items():
        if day in days:
            days[day].update(actions=totals["total"], escalated=totals["review"])
    for c in scope.decision_counts():
        if c.day in days:
            days[c.day]["decisions"] += c.n
            days[c.day]["approved"] += c.n if c.kind == APPROVED else 0
    out = []
    for d in sorted(days):
        row: dict[str, Any] = days[d]
        row["completion_rate"] = rate(row["succeeded"], row["finished"])
        row["escalation_rate"] = rate(row["escalated"], row["actions"])
        row["approval_rate"] = rate(row["approved"], row["decisions"])
        out.append(row)
    return out


BREAKDOWNS = ("action_type", "agent", "workflow")


def breakdowns(scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """Rates per action type, per agent and per workflow: one read of the action counts and
    one grouped decision query serve all three."""
    counts = scope.action_counts()
    names = dict(AgentProfile.objects.values_list("pk", "name"))
    decided = scope.decision_counts()

    def label(by: str, agent_id: int, workflow: str | None, action_type: str) -> str:
        value = {"action_type": action_type, "agent": names.get(agent_id), "workflow": workflow}
        return value[by] or "(API)"

    out = {}
    for by in BREAKDOWNS:
        rows: dict[str, dict[str, Any]] = {}
        for key, n in counts.items():
            row = rows.setdefault(
                label(by, key[1], key[2], key[3]),
                {"actions": 0, "auto": 0, "review": 0, "block": 0},
            )
            row["actions"] += n
            if key[4] in row:
                row[key[4]] += n
        for row in rows.values():
            row["autonomous_share"] = rate(row["auto"], row["actions"])
            row["escalation_rate"] = rate(row["review"], row["actions"])
            row["blocked"] = row["block"]
        judged: dict[str, dict[str, int]] = {}
        for c in decided:
            name = label(by, c.agent_id, c.workflow, c.action_type)
            acc = judged.setdefault(name, {"n": 0, "approved": 0, "edited": 0, "rejected": 0})
            acc["n"] += c.n
            if c.kind in (APPROVED, EDITED):
                acc[c.kind] += c.n
            else:
                acc["rejected"] += c.n
        for name, acc in judged.items():
            row = rows.setdefault(name, {"actions": 0})
            n = acc["n"]
            row.update(
                decisions=n,
                approval_rate=rate(acc["approved"], n),
                edit_rate=rate(acc["edited"], n),
                reject_rate=rate(acc["rejected"], n),
                override_rate=rate(acc["edited"] + acc["rejected"], n),
            )
        out[by] = sorted(
            ({"key": name, **row} for name, row in rows.items()),
            key=lambda r: (-int(r.get("actions") or 0), str(r["key"])),
        )
    return out


def breakdown(scope: Scope, by: str) -> list[dict[str, Any]]:
    """Rates per action type, agent or workflow."""
    return breakdowns(scope)[by]


# --- calibration -----------------------------------------------------------------------------

BINS = 10


def calibration(scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """Per action type, confidence bins against how often people approved unchanged."""
    out: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, list[list[int]]] = {}
    for c in scope.decision_counts():
        bins = counts.setdefault(c.action_type, [[0, 0] for _ in range(BINS)])
        bins[c.bin][0] += c.n if c.kind == APPROVED else 0
        bins[c.bin][1] += c.n
    for kind, bins in sorted(counts.items()):
        out[kind] = [
            {
                "low": i / BINS,
                "high": (i + 1) / BINS,
                "n": n,
                "approved": a,
                "rate": rate(a, n),
                "interval": wilson(a, n),
            }
            for i, (a, n) in enumerate(bins)
        ]
    return out


# --- failure modes and outcomes ------------------------------------------------------------


def failure_cause(error: str) -> str:
    e = error.lower()
    if "verification" in e:
        return "verification failure"
    if "model" in e or "modeloutputerror" in e or "modelerror" in e or "needs attention" in e:
        return "model error"
    if "timeout" in e or "timed out" in e or "time limit" in e:
        return "timeout"
    if "cancel" in e:
        return "cancelled"
    return "other error"


def failure_cases(scope: Scope, limit: int = 30) -> dict[str, list[dict[str, Any]]]:
    """Individual cases, grouped by cause, newest first; each links to its trace."""
    groups: dict[str, list[dict[str, Any]]] = {}

    def add(cause: str, item: dict[str, Any]) -> None:
        bucket = groups.setdefault(cause, [])
        if len(bucket) < limit:
            bucket.append(item)

    failed = (
        scope.runs()
        .filter(status=RunStatus.FAILED)
        .only("error", "finished_at", "created_at", "input", "workflow")
        .order_by("-created_at")
    )
    for run in failed[: limit * 4]:
        add(
            failure_cause(run.error),
            {
                "kind": "run failed",
                "when": run.finished_at or run.created_at,
                "text": run.error,
                "run_id": run.pk,
                "title": run.title,
            },
        )
    # The newest cases first, by themselves; only then their actions and runs (joining first
    # made PostgreSQL fetch every overridden decision's action before sorting).
    newest = list(
        scope.decisions()
        .exclude(verdict=Verdict.APPROVE, edited_payload__isnull=True)
        .order_by("-created_at")
        .values_list("pk", flat=True)[: limit * 4]
    )
    for d in (
        Decision.objects.filter(pk__in=newest)
        .select_related("escalation__action__run", "decided_by")
        # What a case shows, not every payload and state snapshot on the way.
        .only(
            "verdict",
            "reason",
            "created_at",
            "escalation_id",
            "decided_by__username",
            "escalation__action__action_type",
            "escalation__action__run__input",
            "escalation__action__run__workflow",
        )
        .order_by("-created_at")[: limit * 4]
    ):
        action = d.escalation.action
        if d.verdict == Verdict.APPROVE:
            cause, kind = "edited by a reviewer", f"{action.action_type} edited"
        else:
            reason = (d.reason or "no reason").strip().splitlines()[0][:80]
            cause, kind = f"rejected: {reason}", f"{action.action_type} {d.get_verdict_display()}"
        add(
            cause,
            {
                "kind": kind,
                "when": d.created_at,
                "text": d.reason,
                "run_id": action.run_id,
                "escalation_id": d.escalation_id,
                "title": action.run.title if action.run else action.action_type,
                "by": d.decided_by.get_username(),
            },
        )
    for o in (
        Outcome.objects.filter(scope.action_q("action__"), quality=OutcomeQuality.BAD)
        .select_related("action__run")
        .order_by("-recorded_at")[: limit * 4]
    ):
        add(
            "bad outcome: " + o.metric,
            {
                "kind": f"{o.action.action_type if o.action else 'run'} turned out badly",
                "when": o.recorded_at,
                "text": o.note,
                "run_id": o.run_id,
                "title": o.run.title if o.run else o.metric,
            },
        )
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def outcome_quality(scope: Scope) -> dict[str, dict[str, Any]]:
    """Outcome quality for autonomous vs reviewed actions: is a threshold too loose?"""
    qs = Outcome.objects.filter(scope.action_q("action__"))
    result = {}
    for label, cond in (
        ("autonomous", Q(action__outcome=PolicyOutcome.AUTO)),
        ("reviewed", Q(action__outcome=PolicyOutcome.REVIEW)),
    ):
        agg = qs.filter(cond).aggregate(
            n=Count("pk"),
            good=Count("pk", filter=Q(quality=OutcomeQuality.GOOD)),
            bad=Count("pk", filter=Q(quality=OutcomeQuality.BAD)),
        )
        agg["bad_rate"] = rate(agg["bad"], agg["n"])
        agg["interval"] = wilson(agg["bad"], agg["n"])
        result[label] = agg
    return result


def recent_autonomous_actions(scope: Scope, limit: int = 15) -> list[Action]:
    """Executed actions no person saw, for reviewers to mark as wrong after the fact."""
    return list(
        scope.actions()
        .filter(outcome=PolicyOutcome.AUTO, executed_at__isnull=False)
        .select_related("run", "agent")
        .order_by("-created_at")[:limit]
    )
