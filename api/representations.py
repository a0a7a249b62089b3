"""The JSON an agent sees for an action: the same dict answers the API and fills webhooks."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist

from escalations.models import UNDECIDED_STATUSES, Decision, Escalation, reported_status
from workflows.models import Action, ActionStatus, Outcome, WorkflowRun

from .models import SubmittedAction

UNDECIDED_ACTION_STATUSES = frozenset({ActionStatus.PROPOSED, ActionStatus.ESCALATED})


def _related[T](obj: object, name: str, kind: type[T]) -> T | None:
    try:
        value = getattr(obj, name)
    except ObjectDoesNotExist:
        return None
    return value if isinstance(value, kind) else None


def is_decided(action: Action, escalation: Escalation | None) -> bool:
    """Policy or a person has settled it (an expired or cancelled escalation counts)."""
    if action.status not in UNDECIDED_ACTION_STATUSES:
        return True
    return escalation is not None and escalation.status not in UNDECIDED_STATUSES


def describe_action(action: Action) -> dict[str, Any]:
    escalation = _related(action, "escalation", Escalation)
    decision = _related(escalation, "decision", Decision) if escalation else None
    submission = _related(action, "api_submission", SubmittedAction)
    verdict = decision.verdict if decision else None
    return {
        "id": action.pk,
        "agent": action.agent.name,
        "action_type": action.action_type,
        "status": reported_status(action.status, verdict),
        "decided": is_decided(action, escalation),
        "payload": action.payload,
        "payload_to_execute": action.payload_to_execute,
        "confidence": action.confidence,
        "summary": action.rationale,
        "idempotency_key": submission.client_key if submission else action.idempotency_key,
        "workflow": submission.workflow if submission else "",
        "amount": submission.amount if submission else None,
        "reversible": submission.reversible if submission else None,
        "context": submission.context if submission else {},
        "run_id": action.run_id,
        "decision": {
            "outcome": action.outcome,
            "reasons": list(action.reasons),
            "policy_version": action.policy_version,
        },
        "escalation_id": escalation.pk if escalation else None,
        "escalation_status": reported_status(escalation.status, verdict) if escalation else None,
        "verdict": verdict,
        "reason": decision.reason if decision else "",
        "edited_payload": decision.edited_payload if decision else None,
        "decided_by": decision.decided_by.get_username() if decision else None,
        "decided_via": decision.via if decision else None,
        "decided_at": escalation.decided_at if escalation else None,
        "result": action.result,
        "error": action.error,
        "created_at": action.created_at,
        "executed_at": action.executed_at,
    }


def describe_decision(decision: Decision) -> dict[str, Any]:
    return {
        "verdict": decision.verdict,
        "reason": decision.reason,
        "edited_payload": decision.edited_payload,
        "decided_by": decision.decided_by.get_username(),
        "via": decision.via,
        "decided_at": decision.created_at,
    }


def describe_escalation(escalation: Escalation) -> dict[str, Any]:
    action = escalation.action
    decision = _related(escalation, "decision", Decision)
    verdict = decision.verdict if decision else None
    return {
        "id": escalation.pk,
        "status": reported_status(escalation.status, verdict),
        "team": escalation.team.slug,
        "summary": escalation.summary,
        "reasons": list(escalation.reasons),
        "created_at": escalation.created_at,
        "sla_due_at": escalation.sla_due_at,
        "decided_at": escalation.decided_at,
        "action": {
            "id": action.pk,
            "agent": action.agent.name,
            "action_type": action.action_type,
            "payload": action.payload,
            "confidence": action.confidence,
            "summary": action.rationale,
            "status": reported_status(action.status, verdict),
            "run_id": action.run_id,
        },
        "decision": describe_decision(decision) if decision else None,
    }


def describe_run(run: WorkflowRun) -> dict[str, Any]:
    actions = run.actions.select_related("escalation").order_by("created_at")
    return {
        "id": run.pk,
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "agent": run.agent.name,
        "status": run.status,
        "input": run.input,
        "state": run.state,
        "error": run.error,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "actions": [
            {
                "id": a.pk,
                "action_type": a.action_type,
                "status": a.verdict_label,
                "escalation_id": e.pk if (e := _related(a, "escalation", Escalation)) else None,
            }
            for a in actions
        ],
    }


def describe_outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "id": outcome.pk,
        "action_id": outcome.action_id,
        "run_id": outcome.run_id,
        "metric": outcome.metric,
        "quality": outcome.quality,
        "value": outcome.value,
        "source": outcome.source,
        "note": outcome.note,
        "data": outcome.data,
        "recorded_by": outcome.recorded_by,
        "recorded_at": outcome.recorded_at,
    }
