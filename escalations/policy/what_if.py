"""What-if: how a draft policy would have decided the actions already recorded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from workflows.models import Action, PolicyOutcome
from workflows.tools import ToolError

from ..models import AutonomyPolicy, Decision, Escalation
from .compiled import CompiledPolicy, current_policy_set
from .evaluation import _SEVERITY, evaluate


@dataclass(frozen=True)
class WhatIfExample:
    action_id: str
    action_type: str
    agent: str
    confidence: float
    before: PolicyOutcome
    after: PolicyOutcome
    reasons_after: list[str]
    title: str = ""  # the run's (the ticket's subject)
    ticket: str = ""
    created: datetime | None = None
    url: str = ""  # the escalation a person decided, else the run
    verdict: str = ""  # what a person decided, or what happened without one


@dataclass
class WhatIfReport:
    """How the last `total` recorded actions would be decided with and without the draft."""

    total: int = 0
    skipped: int = 0
    counts: dict[tuple[PolicyOutcome, PolicyOutcome], int] = field(default_factory=dict)
    examples: dict[tuple[PolicyOutcome, PolicyOutcome], list[WhatIfExample]] = field(
        default_factory=dict
    )

    @property
    def moved(self) -> int:
        return sum(n for (b, a), n in self.counts.items() if b != a)

    @property
    def transitions(self) -> list[dict[str, Any]]:
        """Every (before, after) pair that changed, biggest first, with its examples."""
        rows = [
            {
                "before": b,
                "after": a,
                "count": n,
                "stricter": _SEVERITY[a] > _SEVERITY[b],
                "examples": self.examples.get((b, a), []),
            }
            for (b, a), n in self.counts.items()
            if b != a
        ]
        return sorted(rows, key=lambda r: -int(r["count"]))

    @property
    def matrix(self) -> list[dict[str, Any]]:
        outcomes = list(PolicyOutcome)
        return [
            {"before": b, "cells": [self.counts.get((b, a), 0) for a in outcomes]} for b in outcomes
        ]


class _ReplayCounter:
    """Rate caps during a replay: counts what *this scenario* let run alone, in order."""

    def __init__(self) -> None:
        self.alone: list[tuple[int, str, str, datetime]] = []

    def __call__(self, policy: CompiledPolicy, agent_id: int, since: datetime) -> int:
        return sum(
            1
            for a, t, w, at in self.alone
            if a == agent_id
            and at >= since
            and (not policy.action_type or t == policy.action_type)
            and (not policy.workflow or w == policy.workflow)
        )


def what_if(draft: AutonomyPolicy, *, limit: int = 500, examples_per_move: int = 8) -> WhatIfReport:
    """Replay the last `limit` recorded actions against today's policies and against today's
    policies with `draft` (unsaved; new or edited) in place, and count what moves.

    Both sides are evaluated now, so the difference is the draft's alone. The kill switch is
    left out (it would hide the policy's effect) and rate caps are replayed from what each
    side let run alone within the window. Each move keeps its newest examples, each with its
    ticket, a link and the verdict a person gave it (the evidence the draft is judged by).
    """
    current = current_policy_set()
    compiled = CompiledPolicy.of(draft)
    proposed = current.replacing(compiled, enabled=draft.enabled)
    actions = list(
        Action.objects.select_related("agent", "run").order_by("-created_at")[: max(limit, 0)]
    )
    actions.reverse()
    report = WhatIfReport()
    counters = (_ReplayCounter(), _ReplayCounter())
    for action in actions:
        workflow = action.run.workflow if action.run is not None else ""
        outcomes = []
        after_reasons: list[str] = []
        try:
            for side, (policy_set, counter) in enumerate(
                zip((current, proposed), counters, strict=True)
            ):
                decision = evaluate(
                    agent=action.agent,
                    workflow=workflow,
                    action_type=action.action_type,
                    confidence=action.confidence,
                    payload=action.payload,
                    now=action.created_at,
                    policy_set=policy_set,
                    count_recent=counter,
                    apply_kill_switch=False,
                )
                outcomes.append(decision.outcome)
                if decision.outcome == PolicyOutcome.AUTO:
                    counter.alone.append(
                        (action.agent_id, action.action_type, workflow, action.created_at)
                    )
                if side == 1:
                    after_reasons = decision.reasons
        except ToolError:
            # An action type no longer declared: nothing to say about it.
            report.skipped += 1
            continue
        before, after = outcomes
        report.total += 1
        report.counts[(before, after)] = report.counts.get((before, after), 0) + 1
        if before != after:
            shown = report.examples.setdefault((before, after), [])
            shown.append(
                WhatIfExample(
                    action_id=str(action.pk),
                    action_type=action.action_type,
                    agent=action.agent.name,
                    confidence=action.confidence,
                    before=before,
                    after=after,
                    reasons_after=after_reasons,
                    title=action.run.title if action.run is not None else "",
                    ticket=str(action.payload.get("ticket_id") or "")[:40],
                    created=action.created_at,
                    url=f"/runs/{action.run_id}/" if action.run_id else "",
                    verdict=_UNDECIDED_VERDICT.get(action.status, action.status),
                )
            )
            if len(shown) > examples_per_move:
                shown.pop(0)  # replayed oldest first: keep the newest
    _add_verdicts(report)
    return report


_UNDECIDED_VERDICT = {
    "auto_approved": "none needed: acted alone",
    "executed": "none needed: acted alone",
    "blocked": "none: blocked",
    "escalated": "waiting for a person",
    "proposed": "not decided yet",
}


def _add_verdicts(report: WhatIfReport) -> None:
    """What a person decided about each example: one query for all of them."""
    examples = [ex for shown in report.examples.values() for ex in shown]
    ids = [ex.action_id for ex in examples]
    decisions = {
        str(d.escalation.action_id): d
        for d in Decision.objects.filter(escalation__action_id__in=ids).select_related(
            "escalation", "decided_by"
        )
    }
    escalated = dict(Escalation.objects.filter(action_id__in=ids).values_list("action_id", "id"))
    for shown in report.examples.values():
        for i, ex in enumerate(shown):
            decision = decisions.get(ex.action_id)
            verdict = ex.verdict
            if decision is not None:
                who = decision.decided_by.get_username() if decision.decided_by else "system"
                verdict = f"{decision.get_verdict_display()} by {who}"
                if decision.edited_payload is not None:
                    verdict += " (edited)"
            esc_id = escalated.get(uuid.UUID(ex.action_id))
            url = f"/review/{esc_id}/" if esc_id is not None else ex.url
            shown[i] = replace(ex, verdict=verdict, url=url)
        shown.reverse()  # newest first
