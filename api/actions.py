"""Mutations behind the agent API: tokens, submitted actions and their results, webhooks.

Views, the admin, the management command, Celery tasks and tests all call these.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from escalations.audit import draw as draw_audit
from escalations.models import AgentProfile, AutonomyPolicy, Escalation
from escalations.policy import PolicyDecision, evaluate
from workflows.models import Action, ActionStatus, Effect, PolicyOutcome
from workflows.tools import ToolError, get_action_type

from . import webhooks
from .access import ACTION_RELATED, get_action_for
from .models import (
    AgentWebhook,
    ApiToken,
    DeliveryStatus,
    SubmittedAction,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    hash_token,
    new_raw_token,
)
from .representations import describe_action

log = logging.getLogger(__name__)

_STATUS_FOR_OUTCOME = {
    PolicyOutcome.AUTO: ActionStatus.AUTO_APPROVED,
    PolicyOutcome.REVIEW: ActionStatus.ESCALATED,
    PolicyOutcome.BLOCK: ActionStatus.BLOCKED,
}


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


# --- tokens ----------------------------------------------------------------------------------


def service_user_for(agent: AgentProfile) -> User:
    """The account a reviewer token decides as when no person is named: `api-<agent>`, a
    member of the agent's team, with no password (it can never log in to the web UI)."""
    user, created = User.objects.get_or_create(username=f"api-{agent.name}")
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    agent.team.members.add(user)
    return user


def create_api_token(
    *, agent: AgentProfile, name: str = "", reviewer: bool = False, user: User | None = None
) -> tuple[ApiToken, str]:
    """Returns the token and its raw value, which exists nowhere else: show it once."""
    if reviewer and user is None:
        user = service_user_for(agent)
    raw = new_raw_token()
    token = ApiToken.objects.create(
        name=name,
        agent=agent,
        prefix=raw[: len("cal_") + 8],
        key_hash=hash_token(raw),
        reviewer=reviewer,
        user=user,
    )
    return token, raw


def revoke_api_token(*, token: ApiToken) -> bool:
    """Revoke at once; True if this call revoked it (False: it already was)."""
    now = timezone.now()
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if revoked:
        token.revoked_at = now
    return bool(revoked)


# --- submitted actions -----------------------------------------------------------------------


def _namespaced_key(agent: AgentProfile, client_key: str) -> str:
    # Action.idempotency_key is unique across every agent and every run; the agent's own key
    # only has to be unique for that agent.
    return f"api:{agent.pk}:{client_key}"


def _same_request(action: Action, action_type: str, payload: dict[str, Any]) -> bool:
    return action.action_type == action_type and action.payload == payload


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

    decision = evaluate_for_api(
        agent=agent,
        workflow=workflow,
        action_type=tool.name,
        confidence=confidence,
        payload=payload,
        reversible=reversible,
    )
    audit = draw_audit(decision)
    try:
        with transaction.atomic():
            action = Action.objects.create(
                **audit.fields,
                agent=agent,
                action_type=tool.name,
                payload=payload,
                confidence=confidence,
                rationale=summary,
                idempotency_key=key,
                outcome=decision.outcome,
                reasons=decision.reasons,
                policy_id=decision.policy_id,
                policy_version=decision.policy_version,
                status=_STATUS_FOR_OUTCOME[decision.outcome],
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
            escalation = None
            if decision.outcome == PolicyOutcome.REVIEW:
                from escalations.actions import escalate_action

                escalation = escalate_action(action=action, team_id=decision.team_id)
                _prime(escalation, "decision", None)
            elif audit.sampled and not (tool.reversible and reversible is not False):
                from escalations.actions import hold_for_audit

                escalation = hold_for_audit(action=action, team_id=decision.team_id)
                _prime(escalation, "decision", None)
            _prime(action, "escalation", escalation)
    except IntegrityError:
        # A concurrent identical request committed first (its INSERT held ours until then).
        winner = _existing(key, tool.name, payload)
        if winner is None:
            raise
        return winner, False
    return action, True


def evaluate_for_api(
    *,
    agent: AgentProfile,
    workflow: str,
    action_type: str,
    confidence: float,
    payload: dict[str, Any],
    reversible: bool | None,
) -> PolicyDecision:
    """Policy evaluation, made stricter (never looser) by what the agent says about itself.

    Risk comes from the declared action type; an agent calling a reversible type's call
    irreversible is believed (it can only cost a review), the opposite claim is ignored.
    """
    base = evaluate(
        agent=agent,
        workflow=workflow,
        action_type=action_type,
        confidence=confidence,
        payload=payload,
    )
    if (
        base.outcome == PolicyOutcome.AUTO
        and reversible is False
        and base.policy_id is not None
        and get_action_type(action_type).reversible
        and AutonomyPolicy.objects.filter(
            pk=base.policy_id, irreversible_requires_review=True
        ).exists()
    ):
        return replace(
            base,
            outcome=PolicyOutcome.REVIEW,
            reasons=[
                f"the agent marked this {action_type} irreversible, and the policy requires "
                "review of irreversible actions"
            ],
        )
    return base


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
                Effect.objects.create(key=action.idempotency_key, action=action, result=result)
            SubmittedAction.objects.filter(action=action).update(result_reported_at=now)
            if succeeded and action.audit_sampled:
                from escalations.actions import audit_after_execution

                audit_after_execution(action=action)
    return get_action_for(token, action_id)


# --- webhooks --------------------------------------------------------------------------------

# Seconds before each retry. Kept under the broker's visibility timeout (task time limit x 4)
# so a waiting retry is never re-delivered early; after the last one the delivery is failed
# and can be re-sent from the admin.
RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0, 600.0)
LEASE = timedelta(seconds=webhooks.TIMEOUT_SECONDS + 15)


def _enqueue_delivery(delivery_id: uuid.UUID, countdown: float = 0) -> None:
    from .tasks import deliver_webhook

    try:
        deliver_webhook.apply_async(args=(str(delivery_id),), countdown=countdown)
    except Exception:
        # The row is the outbox: a broker hiccup leaves it pending, to be re-sent.
        log.exception("could not enqueue webhook delivery %s", delivery_id)


def queue_decision_webhook(escalation: Escalation) -> WebhookDelivery | None:
    """Write the outbox row for a decided escalation of an agent with a webhook.

    Called inside the deciding transaction (escalations.notify); sends after commit. At most
    one automatic delivery per escalation: a second call finds it and does nothing.
    """
    if escalation.is_undecided:
        return None
    action = escalation.action
    webhook = AgentWebhook.objects.filter(agent_id=action.agent_id, enabled=True).first()
    if webhook is None:
        return None
    action = Action.objects.select_related(*ACTION_RELATED).get(pk=action.pk)
    event_id = uuid.uuid4()
    body = json.dumps(
        {
            "id": str(event_id),
            "event": WebhookEvent.ACTION_DECIDED,
            "created_at": timezone.now().isoformat(),
            "action": describe_action(action),
        },
        cls=DjangoJSONEncoder,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                webhook=webhook,
                escalation=escalation,
                event=WebhookEvent.ACTION_DECIDED,
                event_id=event_id,
                url=webhook.url,
                body=body,
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: _enqueue_delivery(delivery.pk))
    return delivery


def resend_delivery(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send an event again (same body and event id, fresh signature) to the webhook's URL."""
    original = delivery.resend_of or delivery
    with transaction.atomic():
        copy = WebhookDelivery.objects.create(
            webhook=original.webhook,
            escalation=original.escalation,
            event=original.event,
            event_id=original.event_id,
            url=original.webhook.url,
            body=original.body,
            resend_of=original,
        )
        transaction.on_commit(lambda: _enqueue_delivery(copy.pk))
    return copy


def _retry_delay(attempts: int) -> float | None:
    if attempts > len(RETRY_DELAYS):
        return None
    base = RETRY_DELAYS[attempts - 1]
    return base * random.uniform(0.8, 1.2)


def attempt_webhook_delivery(*, delivery_id: uuid.UUID | str) -> float | None:
    """Try one delivery once; the seconds until the next try, or None when done.

    A worker leases the row with a conditional UPDATE (its row count says who won), sends
    without holding a transaction, then records the attempt. A worker that dies mid-send
    leaves a lease that expires, so a redelivered task can try again.
    """
    now = timezone.now()
    claimed = (
        WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
        .exclude(leased_until__gt=now)
        .update(leased_until=now + LEASE)
    )
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    started = timezone.now()
    clock = time.monotonic()
    outcome = webhooks.post_signed(
        url=delivery.url, secret=delivery.webhook.secret, body=delivery.body, delivery=delivery
    )
    elapsed_ms = int((time.monotonic() - clock) * 1000)
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        delivery.attempts += 1
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            status_code=outcome.status_code,
            error=outcome.error,
            response_excerpt=outcome.excerpt,
            duration_ms=elapsed_ms,
            started_at=started,
        )
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        delivery.leased_until = None
        delay: float | None = None
        if outcome.ok:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = timezone.now()
        else:
            delay = _retry_delay(delivery.attempts)
            if delay is None:
                delivery.status = DeliveryStatus.FAILED
            else:
                delivery.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        delivery.save(
            update_fields=[
                "attempts",
                "last_status_code",
                "last_error",
                "leased_until",
                "status",
                "delivered_at",
                "next_attempt_at",
            ]
        )
    return delay


# A pending delivery this far past its due time has lost its task (a broker outage at
# enqueue, a purged queue): the sweep sends it again.
STALLED_AFTER = timedelta(minutes=2)


def requeue_stalled_deliveries(*, now: datetime | None = None) -> int:
    """Re-enqueue pending deliveries whose task is evidently lost; how many. Safe to run
    any time: the lease in attempt_webhook_delivery keeps a duplicate task from sending."""
    now = now or timezone.now()
    stalled = list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lt=now - STALLED_AFTER
        )
        .exclude(leased_until__gt=now)
        .values_list("pk", flat=True)[:500]
    )
    for pk in stalled:
        _enqueue_delivery(pk)
    return len(stalled)
