"""Decision webhooks: the delivery row (the outbox) written in the deciding transaction,
each attempt leased, sent, recorded, and retried with backoff."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from escalations.actions import read_along_value
from escalations.models import Escalation
from workflows import outbox
from workflows.models import Action
from workflows.retry import DELIVERY

from .. import webhooks
from ..access import ACTION_RELATED
from ..models import (
    AgentWebhook,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from ..representations import describe_action

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=webhooks.TIMEOUT_SECONDS + 15)
DELIVER_TASK = "api.tasks.deliver_webhook"


def _enqueue_delivery(delivery_id: uuid.UUID, countdown: float = 0) -> None:
    """Precondition: inside the transaction that makes the attempt due (an outbox row: a
    broker outage at commit leaves it for the relay, nothing is lost)."""
    outbox.enqueue(DELIVER_TASK, str(delivery_id), countdown=countdown)


def queue_decision_webhook(escalation: Escalation) -> WebhookDelivery | None:
    """Write the outbox row for a decided escalation of an agent with a webhook.

    Called inside the deciding transaction (escalations.notify); sends after commit. At most
    one automatic delivery per escalation: a second call finds it and does nothing.
    """
    if escalation.is_undecided:
        return None
    action = escalation.action
    known, webhook_id = read_along_value(escalation, WEBHOOK_READ_ALONG)
    if known and webhook_id is None:
        # The decision's own read found none: nothing to ask the database.
        return None
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
        _enqueue_delivery(delivery.pk)
    except IntegrityError:
        return None
    return delivery


# What the read starting each decision carries for us (registered in api.apps): the
# agent's enabled webhook, if any, so that a decision for an agent without one (nearly
# all of them) spends no statement here.
WEBHOOK_READ_ALONG = "api_webhook"


def webhook_read_along_sql() -> str:
    """The expression over the decided action's agent (`found.agent_id`) read along with
    each decision."""
    meta = AgentWebhook._meta
    agent = meta.get_field("agent").column
    enabled = meta.get_field("enabled").column
    return (
        f"SELECT w.id FROM {meta.db_table} w "  # noqa: S608
        f"WHERE w.{agent} = found.agent_id AND w.{enabled} LIMIT 1"
    )


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
        _enqueue_delivery(copy.pk)
    return copy


def attempt_webhook_delivery(*, delivery_id: uuid.UUID | str) -> float | None:
    """Try one delivery once; the seconds until the next try, or None when done.

    A worker leases the row with a conditional UPDATE (its row count says who won), sends
    without holding a transaction, then records the attempt and, on failure, schedules the
    next one on the delivery policy (an outbox row in the same transaction). A worker that
    dies mid-send leaves a lease that expires, so the stalled sweep can try again.
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
            delay = DELIVERY.next_delay(delivery.attempts)
            if delay is None:
                delivery.status = DeliveryStatus.FAILED
            else:
                delivery.next_attempt_at = timezone.now() + timedelta(seconds=delay)
                _enqueue_delivery(delivery.pk, countdown=delay)
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
        with transaction.atomic():
            _enqueue_delivery(pk)
    return len(stalled)
