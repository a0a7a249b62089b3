"""Opening an audit: a person judges an action that policy let run alone.

An audit is an escalation of kind AUDIT and goes through the same queue, access rules and
`decide_escalation` as any other. A reversible action is audited after it ran (the verdict
is evidence, it changes nothing); an irreversible one before it runs, so the audit holds it
exactly like a review would and the verdict decides whether it runs.
"""

from __future__ import annotations

from django.db import transaction

from workflows.models import Action, ActionStatus

from ..models import Escalation, EscalationKind
from ..policy import policy_as_evaluated
from .decisions import escalate_action


def _reason(action: Action, *, before: bool) -> str:
    p = action.audit_probability or 0.0
    when = "before it runs" if before else "after it ran"
    return (
        f"audit sample ({p:.1%} of {action.action_type} actions allowed to run alone are "
        f"judged by a person, {when}): approve if it was right, reject or edit if not"
    )


def hold_for_audit(*, action: Action, team_id: int) -> Escalation:
    """An irreversible action drawn for audit: held, like a review, until a person judges it.

    Precondition: `action` was just created with outcome AUTO and `audit_sampled`; inside the
    transaction that created it. Its status becomes ESCALATED (the outcome stays AUTO: policy
    let it act alone; the audit, not the policy, holds it)."""
    action.status = ActionStatus.ESCALATED
    action.reasons = [_reason(action, before=True), *action.reasons]
    action.save(update_fields=["status", "reasons"])
    return escalate_action(action=action, team_id=team_id, kind=EscalationKind.AUDIT)


def audit_after_execution(*, action: Action) -> Escalation | None:
    """A reversible action drawn for audit has run: open its audit (once; no SLA, nothing
    waits on it). Returns None when it has nothing to audit."""
    if not action.audit_sampled or action.status != ActionStatus.EXECUTED:
        return None
    if Escalation.objects.filter(action=action).exists():
        return None
    with transaction.atomic():
        action.reasons = [_reason(action, before=False), *action.reasons]
        action.save(update_fields=["reasons"])
        return escalate_action(
            action=action,
            team_id=_owner_team_id(action),
            kind=EscalationKind.AUDIT,
            with_sla=False,
        )


def _owner_team_id(action: Action) -> int:
    policy = policy_as_evaluated(action.policy_id, action.policy_version)
    if policy is not None and policy.team_id is not None:
        return policy.team_id
    return int(action.agent.team_id)
