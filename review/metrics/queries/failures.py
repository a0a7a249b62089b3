"""Failure modes and outcomes: what went wrong and why, how actions turned out."""

from __future__ import annotations

from typing import Any

from django.db.models import (
    Count,
    Q,
)

from escalations.models import Decision, Verdict
from workflows.models import (
    Action,
    Outcome,
    OutcomeQuality,
    PolicyOutcome,
    RunStatus,
)

from .scope import Scope, rate, wilson


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
    handed_off = (
        scope.runs()
        .filter(status=RunStatus.HANDED_OFF)
        .only("error", "finished_at", "created_at", "input", "workflow")
        .order_by("-created_at")
    )
    for run in handed_off[: limit * 4]:
        add(
            "handed to a person",
            {
                "kind": "run handed off",
                "when": run.finished_at or run.created_at,
                "text": run.error,
                "run_id": run.pk,
                "title": run.title,
            },
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
        elif d.verdict == Verdict.RESPOND:
            # Its own mode: the agent was answered and revised, not refused.
            cause, kind = "answered by a reviewer", f"{action.action_type} answered"
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
