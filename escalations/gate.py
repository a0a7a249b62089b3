"""The policy gate escalations plugs into the engine (workflows.gate), registered at start."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from workflows.gate import Guard
from workflows.models import Action, ActionStatus, WorkflowRun

from . import notify
from .actions import escalate_action
from .actions.audits import audit_after_execution, hold_for_audit
from .audit import draw
from .models import UNDECIDED_STATUSES, Escalation, EscalationKind, EscalationStatus
from .policy import PolicyDecision, evaluate
from .policy.compiled import STAMP_UNMOVED, cached_policy_set


class PolicyGate:
    def evaluate(
        self,
        *,
        agent: Any,
        workflow: str,
        action_type: str,
        confidence: float,
        payload: dict[str, Any],
        declared_irreversible: bool = False,
        fresh: bool = True,
    ) -> PolicyDecision:
        cached = None if fresh else cached_policy_set()
        decision = evaluate(
            agent=agent,
            workflow=workflow,
            action_type=action_type,
            confidence=confidence,
            payload=payload,
            declared_irreversible=declared_irreversible,
            policy_set=cached[1] if cached is not None else None,
        )
        if cached is None:
            return decision
        # Not asked whether the cache is current (a statement): the action's INSERT asks.
        return replace(decision, guard=Guard(STAMP_UNMOVED, (cached[0],)))

    def escalate(self, *, action: Action, team_id: int) -> None:
        escalate_action(action=action, team_id=team_id)

    def draw_audit(self, *, verdict: Any) -> tuple[float | None, bool]:
        sample = draw(verdict)
        return sample.probability, sample.sampled

    def audit(self, *, action: Action, team_id: int | None) -> None:
        if team_id is not None:
            hold_for_audit(action=action, team_id=team_id)
        else:
            audit_after_execution(action=action)

    def run_cancelled(self, *, run: WorkflowRun) -> int:
        return cancel_open_escalations(run=run)

    def awaiting_people(self) -> Q:
        # An audit of an action that already ran holds nothing up: only reviews, and audits
        # holding an irreversible action before it runs (its status ESCALATED), are waited on.
        return Q(
            Exists(
                Escalation.objects.filter(
                    action__run=OuterRef("pk"), status__in=UNDECIDED_STATUSES
                ).filter(Q(kind=EscalationKind.REVIEW) | Q(action__status=ActionStatus.ESCALATED))
            )
        )


def cancel_open_escalations(*, run: WorkflowRun) -> int:
    """Cancel the run's undecided escalations; how many. Inside the cancelling transaction.

    Starts from open and claimed; each conditional UPDATE races a person deciding: whoever
    wins, exactly one outcome.
    """
    cancelled = 0
    for esc in Escalation.objects.filter(action__run=run, status__in=UNDECIDED_STATUSES):
        if Escalation.objects.filter(pk=esc.pk, status__in=UNDECIDED_STATUSES).update(
            status=EscalationStatus.CANCELLED, decided_at=timezone.now()
        ):
            esc.status = EscalationStatus.CANCELLED
            notify.escalation_changed(esc)
            cancelled += 1
    return cancelled
