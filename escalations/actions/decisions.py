"""Escalating an action to people, and recording their one decision on it."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from workflows.models import Action, ActionStatus, TraceKind

from .. import notify
from ..access import get_escalation_for
from ..models import (
    UNDECIDED_STATUSES,
    Decision,
    Escalation,
    EscalationStatus,
    Verdict,
    Via,
)
from ..summary import summarise


class AlreadyDecided(Exception):
    """Someone (or something) got there first; `escalation` says who and how."""

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        decision = (
            Decision.objects.filter(escalation=escalation).select_related("decided_by").first()
        )
        self.decision = decision
        if decision is not None:
            msg = (
                f"already {escalation.status} by {decision.decided_by} via {decision.via} "
                f"at {decision.created_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        else:
            msg = f"already {escalation.status}"
        super().__init__(msg)


def payload_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer changed: keys added, removed, and changed (with old and new values)."""
    return {
        "added": {k: after[k] for k in after.keys() - before.keys()},
        "removed": {k: before[k] for k in before.keys() - after.keys()},
        "changed": {
            k: [before[k], after[k]] for k in before.keys() & after.keys() if before[k] != after[k]
        },
    }


def escalate_action(*, action: Action, team_id: int) -> Escalation:
    """Open an escalation for `action` and announce it to the team's live queue after commit."""
    from workflows.actions import record_trace

    escalation = Escalation.objects.create(
        action=action,
        team_id=team_id,
        reasons=list(action.reasons),
        summary=summarise(action, list(action.reasons)),
    )
    if action.run is not None:
        record_trace(
            run=action.run,
            kind=TraceKind.ESCALATED,
            step_name=action.step_name,
            message=f"{action.action_type} escalated to team {escalation.team.name}",
            data={"escalation": str(escalation.pk)},
        )
    notify.escalation_opened(escalation)
    return escalation


def decide_escalation(
    *,
    escalation_id: uuid.UUID | str,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str = "",
    edited_payload: dict[str, Any] | None = None,
) -> Decision:
    """Record a person's verdict: exactly one wins, whatever channel and however many clicks.

    Raises Http404 if `user` may not see it, ValidationError for a bad verdict, and
    AlreadyDecided (naming the winner) if it was decided first elsewhere. On commit, the
    run is re-enqueued and every open queue is told.
    """
    from workflows.actions import record_trace
    from workflows.tasks import enqueue_advance

    verdict = Verdict(verdict)
    via = Via(via)
    reason = reason.strip()
    if verdict == Verdict.REJECT and not reason:
        raise ValidationError({"reason": "Say why you reject it; the agent is told."})
    if verdict == Verdict.RESPOND and not reason:
        raise ValidationError({"reason": "Write the answer the agent should get."})
    if edited_payload is not None and not isinstance(edited_payload, dict):
        raise ValidationError({"edited_payload": "The edited payload must be a JSON object."})

    with transaction.atomic():
        escalation = get_escalation_for(user, escalation_id)
        now = timezone.now()
        new_status = (
            EscalationStatus.APPROVED if verdict == Verdict.APPROVE else EscalationStatus.REJECTED
        )
        # The conditional UPDATE is the race's referee: its row count says who won.
        won = Escalation.objects.filter(pk=escalation.pk, status__in=UNDECIDED_STATUSES).update(
            status=new_status, decided_at=now
        )
        if not won:
            escalation.refresh_from_db()
            raise AlreadyDecided(escalation)
        try:
            with transaction.atomic():
                decision = Decision.objects.create(
                    escalation=escalation,
                    verdict=verdict,
                    decided_by=user,
                    via=via,
                    reason=reason,
                    edited_payload=edited_payload,
                )
        except IntegrityError:
            escalation.refresh_from_db()
            raise AlreadyDecided(escalation) from None
        escalation.status = new_status
        escalation.decided_at = now
        action = escalation.action
        action.status = (
            ActionStatus.APPROVED if verdict == Verdict.APPROVE else ActionStatus.REJECTED
        )
        if verdict == Verdict.APPROVE and edited_payload is not None:
            action.approved_payload = edited_payload
        action.save(update_fields=["status", "approved_payload"])
        if action.run is not None:
            record_trace(
                run=action.run,
                kind=TraceKind.HUMAN,
                step_name=action.step_name,
                actor=user.get_username(),
                message=f"{user.get_username()} "
                + ("answered instead of running" if verdict == Verdict.RESPOND else new_status)
                + f" {action.action_type} via {via}"
                + (f": {reason}" if reason else ""),
                data={
                    "payload_diff": payload_diff(action.payload, edited_payload)
                    if edited_payload is not None
                    else None,
                    "escalation": str(escalation.pk),
                    "verdict": verdict,
                    "via": via,
                    "edited": edited_payload is not None,
                },
            )
            run_id = action.run.pk
            transaction.on_commit(lambda: enqueue_advance(run_id))
        notify.escalation_changed(escalation)
    return decision
