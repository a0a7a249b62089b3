"""Actions submitted through the API: held against policy at once, and the result the agent
reports once it ran one."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from escalations.actions import audit_after_execution
from escalations.models import AgentProfile
from workflows.actions import create_action, record_effect
from workflows.models import Action, ActionStatus
from workflows.tools import ToolError, get_action_type

from ..access import ACTION_RELATED, get_action_for
from ..models import ApiToken, SubmittedAction

log = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """The agent reused an idempotency key for a different action."""

    def __init__(self, existing: Action) -> None:
        self.existing = existing
        super().__init__(
            f"idempotency key already used for action {existing.pk} with a different "
            "action type or payload; use a new key for a new action"
        )


class ResultConflict(Exception):
    """The action is not in a state that can take this result."""


def _namespaced_key(agent: AgentProfile, client_key: str) -> str:
    # Action.idempotency_key is unique across every agent and every run; the agent's own key
    # only has to be unique for that agent.
    return f"api:{agent.pk}:{client_key}"


def _existing(key: str, action_type: str, payload: dict[str, Any]) -> Action | None:
    # A plain indexed lookup first: the common case is "no such key", and the full read
    # (with the escalation and decision) is only worth compiling when there is one.
    found = (
        Action.objects.filter(idempotency_key=key)
        .values_list("pk", "action_type", "payload")
        .first()
    )
    if found is None:
        return None
    pk, existing_type, existing_payload = found
    action = Action.objects.select_related(*ACTION_RELATED).get(pk=pk)
    if existing_type != action_type or existing_payload != payload:
        raise IdempotencyConflict(action)
    return action


def _prime(obj: object, field: str, value: object) -> None:
    """Record a reverse one-to-one we know the value of, so reading it costs no query."""
    type(obj)._meta.get_field(field).set_cached_value(obj, value)  # type: ignore[attr-defined]


def _json_number(amount: Decimal) -> int | float:
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def submit_action(
    *,
    token: ApiToken,
    action_type: str,
    payload: dict[str, Any],
    confidence: float,
    idempotency_key: str,
    workflow: str = "",
    amount: Decimal | None = None,
    reversible: bool | None = None,
    context: dict[str, Any] | None = None,
    summary: str = "",
) -> tuple[Action, bool]:
    """Hold an agent's proposed action against policy at once; (action, created).

    AUTO approves it, REVIEW escalates it to the policy's team, BLOCK refuses it. The same
    idempotency key returns the same action; the unique key decides concurrent duplicates,
    and the loser returns the winner's action. Raises ToolError for an undeclared action
    type or a payload it refuses, IdempotencyConflict for a key reused for another action.
    """
    agent = token.agent
    tool = get_action_type(action_type)
    if tool.amount_field is not None and amount is not None:
        declared = payload.get(tool.amount_field)
        if declared is None:
            # Policies read the amount from the payload's declared field.
            payload = {**payload, tool.amount_field: _json_number(amount)}
        elif not isinstance(declared, int | float) or Decimal(str(declared)) != amount:
            raise ToolError(f"amount {amount} disagrees with payload.{tool.amount_field}")
    tool.validate(payload)
    key = _namespaced_key(agent, idempotency_key)
    existing = _existing(key, tool.name, payload)
    if existing is not None:
        return existing, False

    try:
        with transaction.atomic():
            action = create_action(
                agent=agent,
                workflow=workflow,
                action_type=tool.name,
                payload=payload,
                confidence=confidence,
                rationale=summary,
                idempotency_key=key,
                # What the agent says about its own call is policy input: it can only make
                # the verdict stricter (the policy believes "irreversible", never the reverse).
                declared_irreversible=reversible is False,
            )
            SubmittedAction.objects.create(
                action=action,
                token=token,
                client_key=idempotency_key,
                workflow=workflow,
                amount=amount,
                reversible=reversible,
                context=context or {},
            )
            if action.status == ActionStatus.ESCALATED:
                # Creating the escalation cached it on the action; it has no decision yet.
                _prime(action.escalation, "decision", None)
            else:
                _prime(action, "escalation", None)
    except IntegrityError:
        # A concurrent identical request committed first (its INSERT held ours until then).
        winner = _existing(key, tool.name, payload)
        if winner is None:
            raise
        return winner, False
    return action, True


def record_action_result(
    *,
    token: ApiToken,
    action_id: uuid.UUID,
    succeeded: bool,
    result: dict[str, Any] | None = None,
    error: str = "",
) -> Action:
    """The agent says it ran (or failed to run) an approved action.

    Only auto-approved or approved actions take a result, once: the same report again is a
    no-op (a retried request), a different one raises ResultConflict. An executed action is
    written to the effect ledger under its idempotency key.
    """
    if succeeded and result is None:
        result = {}
    with transaction.atomic():
        action = get_action_for(token, action_id)
        action = Action.objects.select_for_update().get(pk=action.pk)
        wanted = ActionStatus.EXECUTED if succeeded else ActionStatus.FAILED
        if action.status in (ActionStatus.EXECUTED, ActionStatus.FAILED):
            same = action.status == wanted and (
                action.result == result if succeeded else action.error == error
            )
            if not same:
                raise ResultConflict(f"a different result was already reported: {action.status}")
        elif action.status not in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
            raise ResultConflict(
                f"the action is {action.status}; only an approved action can be run"
            )
        else:
            now = timezone.now()
            action.status = wanted
            action.result = result if succeeded else None
            action.error = "" if succeeded else error
            action.executed_at = now if succeeded else None
            action.save(update_fields=["status", "result", "error", "executed_at"])
            if succeeded:
                # Fenced: the action's row lock, and its status checked above.
                record_effect(
                    key=action.idempotency_key, action=action, result=result or {}, fenced=True
                )
                if action.audit_sampled:
                    audit_after_execution(action=action)
            SubmittedAction.objects.filter(action=action).update(result_reported_at=now)
    return get_action_for(token, action_id)
