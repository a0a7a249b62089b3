"""The scope every query takes (period, workflow / agent / action type, the viewer's
teams) and how it reads rows or whole-day rollups; rates and their confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from django.db.models import (
    Case,
    Count,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Floor, Greatest, Least, TruncDate

from escalations.models import AgentProfile, Decision, Escalation, Verdict
from workflows.models import (
    Action,
    WorkflowRun,
)
from workflows.prompts.models import ModelCall

from .. import rollups

APPROVED, EDITED = "approved", "edited"  # approved unchanged; approved after an edit
# Confidence deciles of the calibration table.
BINS = 10


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


def outcome_totals(counts: dict[tuple[Any, ...], int], group: int | None) -> dict[Any, Any]:
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
