"""Escalating an action to people, and recording their one decision on it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from workflows import outbox
from workflows import tasks as workflow_tasks
from workflows.actions import record_trace
from workflows.models import Action, ActionStatus, TraceKind
from workflows.tools import ACTION_TYPES, ToolError, get_action_type

from .. import notify
from ..access import get_escalation_for
from ..models import (
    UNDECIDED_STATUSES,
    Approval,
    Decision,
    Escalation,
    EscalationKind,
    EscalationStatus,
    ExpiryBehaviour,
    Team,
    Verdict,
    Via,
)
from ..policy import amount_of, policy_as_evaluated
from ..risk import DUE_WITHOUT_SLA, grade_risk
from ..search import search_text_for
from ..summary import first_summary

WRITE_SUMMARY = "escalations.tasks.write_summary"


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


def _chain_team_ids(slugs: tuple[str, ...]) -> list[int]:
    by_slug = dict(Team.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    return [by_slug[s] for s in slugs if s in by_slug]


def escalate_action(
    *,
    action: Action,
    team_id: int,
    kind: EscalationKind = EscalationKind.REVIEW,
    with_sla: bool = True,
) -> Escalation:
    """Open an escalation for `action` and announce it to the team's live queue after commit.

    Its SLA, escalation chain, expiry behaviour and quorum are copied from the policy version
    recorded on the action, so editing the policy afterwards changes nothing already open.
    An audit (`kind`) of an action that already ran has no SLA (`with_sla=False`).
    """
    policy = policy_as_evaluated(action.policy_id, action.policy_version)
    now = timezone.now()
    routing: dict[str, Any] = {}
    tool = ACTION_TYPES.get(action.action_type)
    amount = amount_of(tool, action.payload) if tool is not None else None
    risk = grade_risk(
        tool=tool,
        amount=amount,
        max_amount=policy.max_amount if policy is not None else None,
        confidence=action.confidence,
        bar=policy.bar_for(action.agent.trust_level) if policy is not None else None,
    )
    if policy is not None:
        routing["approvals_required"] = policy.approvals_for(amount)
        if policy.sla_minutes and with_sla:
            routing.update(
                sla_minutes=policy.sla_minutes,
                sla_due_at=now + timedelta(minutes=policy.sla_minutes),
                chain=_chain_team_ids(policy.chain_slugs),
                expiry_behaviour=policy.expiry_behaviour,
                expiry_team_id=policy.expiry_team_id
                if policy.expiry_behaviour == ExpiryBehaviour.REROUTE
                else None,
            )
    # The template now; the model's after commit (write_summary), never in here.
    summary = first_summary(action, list(action.reasons))
    escalation = Escalation.objects.create(
        action=action,
        team_id=team_id,
        kind=kind,
        reasons=list(action.reasons),
        summary=summary,
        created_at=now,
        risk=risk,
        due_without_sla_at=now + DUE_WITHOUT_SLA[risk],
        search_text=search_text_for(
            action_type=action.action_type,
            agent=action.agent.name,
            payload=action.payload,
            ticket=action.run.input if action.run is not None else None,
            summary=summary,
        ),
        **routing,
    )
    if action.run is not None:
        extras = []
        if escalation.sla_minutes:
            extras.append(f"SLA {escalation.sla_minutes} min")
        if escalation.needs_quorum:
            extras.append(f"needs {escalation.approvals_required} approvals")
        record_trace(
            run=action.run,
            kind=TraceKind.ESCALATED,
            step_name=action.step_name,
            message=f"{action.action_type} "
            + ("sent for audit" if kind == EscalationKind.AUDIT else "escalated")
            + f" to team {escalation.team.name}"
            + (f" ({', '.join(extras)})" if extras else ""),
            data={"escalation": str(escalation.pk)},
        )
    notify.escalation_opened(escalation)
    outbox.enqueue(WRITE_SUMMARY, str(escalation.pk))
    return escalation


def decide_escalation(
    *,
    escalation_id: uuid.UUID | str,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str = "",
    edited_payload: dict[str, Any] | None = None,
) -> Decision | Approval:
    """Record a person's verdict: exactly one wins, whatever channel and however many clicks.

    Raises Http404 if `user` may not see it, ValidationError for a bad verdict, and
    AlreadyDecided (naming the winner) if it was decided first elsewhere. On commit, the
    run is re-enqueued and every open queue is told.

    An escalation needing several approvals (quorum) returns an `Approval` until the last
    one needed arrives, which returns the `Decision`; the same reviewer approving again
    counts once (their first Approval is returned). One rejection ends it at once.
    """

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
        if verdict == Verdict.APPROVE and edited_payload is not None:
            edited_payload = _checked_edit(escalation.action, edited_payload)
        if verdict == Verdict.APPROVE and escalation.needs_quorum:
            if edited_payload is not None:
                raise ValidationError(
                    {
                        "edited_payload": "This needs several approvals of the same action, so "
                        "it cannot be edited: reject it and say what should change."
                    }
                )
            return _approve_towards_quorum(escalation=escalation, user=user, via=via, reason=reason)
        new_status = (
            EscalationStatus.APPROVED if verdict == Verdict.APPROVE else EscalationStatus.REJECTED
        )
        return finalise_decision(
            escalation=escalation,
            user=user,
            verdict=verdict,
            via=via,
            reason=reason,
            new_status=new_status,
            edited_payload=edited_payload,
        )


def _checked_edit(action: Action, edited: dict[str, Any]) -> dict[str, Any] | None:
    """The reviewer's edit, validated by the action type's declaration (ValidationError if it
    refuses it); None when it changes nothing (an unchanged "edit" is a plain approval)."""
    try:
        get_action_type(action.action_type).validate(edited)
    except ToolError as exc:
        raise ValidationError({"edited_payload": str(exc)}) from None
    return edited if edited != action.payload else None


def finalise_decision(
    *,
    escalation: Escalation,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str,
    new_status: EscalationStatus,
    edited_payload: dict[str, Any] | None = None,
    actor: str | None = None,
    message: str | None = None,
) -> Decision:
    """Write the one Decision, move the action, re-enqueue the run. Inside a transaction.

    Raises AlreadyDecided if the escalation is no longer undecided: whoever calls this —
    a person, the last quorum approver, the SLA timer — races through the same conditional
    UPDATE, so exactly one outcome is ever recorded.
    """
    now = timezone.now()
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
    if escalation.is_audit and action.status != ActionStatus.ESCALATED:
        # An audit of an action that already ran alone: the verdict is evidence about it
        # (the recommender and the drift test read it); the action and its run stay as they are.
        notify.escalation_changed(escalation)
        return decision
    action.status = ActionStatus.APPROVED if verdict == Verdict.APPROVE else ActionStatus.REJECTED
    if verdict == Verdict.APPROVE and edited_payload is not None:
        action.approved_payload = edited_payload
    action.save(update_fields=["status", "approved_payload"])
    if action.run is not None:
        record_trace(
            run=action.run,
            kind=TraceKind.HUMAN if via != Via.SYSTEM else TraceKind.SYSTEM,
            step_name=action.step_name,
            actor=actor if actor is not None else user.get_username(),
            message=message
            or (
                f"{user.get_username()} "
                + ("answered instead of running" if verdict == Verdict.RESPOND else new_status)
                + f" {action.action_type} via {via}"
                + (f": {reason}" if reason else "")
            ),
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
        # robust: the decision is committed by then; a broker hiccup must not turn it into an
        # error page (Slack would tell the clicker it failed). engine.reconcile_runs resumes a
        # waiting run whose escalations are all decided, so a lost send is only late.
        transaction.on_commit(lambda: workflow_tasks.enqueue_advance(run_id), robust=True)
    notify.escalation_changed(escalation)
    return decision


def _approve_towards_quorum(
    *, escalation: Escalation, user: User, via: Via, reason: str
) -> Decision | Approval:
    """One distinct reviewer's approval; the last one needed decides. Inside a transaction.

    The escalation's row lock serialises approvers (and the SLA timer), so the count read
    after inserting is the true count and exactly one approver completes the quorum.
    """
    locked = Escalation.objects.select_for_update().filter(pk=escalation.pk).first()
    if locked is None or not locked.is_undecided:
        escalation.refresh_from_db()
        raise AlreadyDecided(escalation)
    escalation.status = locked.status
    existing = Approval.objects.filter(escalation=escalation, decided_by=user).first()
    if existing is not None:
        return existing
    approval = Approval.objects.create(
        escalation=escalation, decided_by=user, via=via, reason=reason
    )
    approvers = list(
        Approval.objects.filter(escalation=escalation)
        .order_by("created_at", "pk")
        .values_list("decided_by__username", flat=True)
    )
    required = escalation.approvals_required
    action = escalation.action
    if len(approvers) >= required:
        return finalise_decision(
            escalation=escalation,
            user=user,
            verdict=Verdict.APPROVE,
            via=via,
            reason=reason,
            new_status=EscalationStatus.APPROVED,
            message=f"{user.get_username()} approved {action.action_type} via {via}, "
            f"completing the quorum ({', '.join(approvers)}: {len(approvers)} of {required})"
            + (f": {reason}" if reason else ""),
        )
    if action.run is not None:
        record_trace(
            run=action.run,
            kind=TraceKind.HUMAN,
            step_name=action.step_name,
            actor=user.get_username(),
            message=f"{user.get_username()} approved {action.action_type} via {via} "
            f"({len(approvers)} of {required} approvals)" + (f": {reason}" if reason else ""),
            data={"escalation": str(escalation.pk), "verdict": Verdict.APPROVE, "via": via},
        )
    notify.escalation_changed(escalation)
    return approval
