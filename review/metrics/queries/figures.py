"""Headline figures: runs, actions, decisions, time to decision, SLAs, cost."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
)

from escalations.models import EscalationStatus, Verdict
from workflows.models import (
    DeadLetter,
)

from .scope import APPROVED, EDITED, Scope, outcome_totals, rate


def run_figures(scope: Scope) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for key, n in scope.run_counts().items():
        by_status[key[3]] = by_status.get(key[3], 0) + n
    agg: dict[str, Any] = {
        "total": sum(by_status.values()),
        **{
            s: by_status.get(s, 0)
            for s in ("succeeded", "handed_off", "failed", "cancelled", "waiting")
        },
    }
    # A run a person took over (handed_off) finished without meeting its objective.
    finished = agg["succeeded"] + agg["handed_off"] + agg["failed"] + agg["cancelled"]
    # A run succeeds only when every step met its success criteria, so "succeeded" is
    # "finished and met its objective": the completion rate's numerator.
    agg["completion_rate"] = rate(agg["succeeded"], finished)
    agg["finished"] = finished
    agg["dead_lettered"] = DeadLetter.objects.filter(scope.run_q("run__")).count()
    return agg


def action_figures(scope: Scope) -> dict[str, Any]:
    agg: dict[str, Any] = outcome_totals(scope.action_counts(), None).get(
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
    agg["reject_rate"] = rate(agg["rejected"], n)
    # Its own verdict: the agent was answered (and revised), not refused.
    agg["respond_rate"] = rate(agg["responded"], n)
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
