"""Celery tasks for Slack: load by id, call delivery, own the retries (outbox rows)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import transaction

from workflows import outbox

from . import conf, delivery

SYNC_MESSAGE = "slack.sync_message"
SYNC_ESCALATION = "slack.sync_escalation"


@shared_task(name="slack.sync_message")
def sync_message(message_id: int) -> None:
    retry_in = delivery.sync_message(message_id=message_id)
    if retry_in is not None:
        with transaction.atomic():
            enqueue_sync(message_id, countdown=retry_in)


@shared_task(name="slack.sync_escalation")
def sync_escalation(escalation_id: str) -> None:
    """Every message of one escalation that is behind what was asked of it (the outbox
    counters), each with its own lease and its own retries."""
    for pk in delivery.stale_message_ids(escalation_id=escalation_id):
        sync_message(pk)


@shared_task(name="slack.post_ephemeral")
def post_ephemeral(escalation_id: str | None, channel: str, user: str, text: str) -> None:
    delivery.post_ephemeral(escalation_id=escalation_id, channel=channel, user=user, text=text)


@shared_task(name="slack.sweep")
def sweep() -> int:
    """Beat: messages left behind by a worker that died holding the lease (or whose retry
    row is gone with a broker that lost its queue); prunes replay nonces. Sends and retries
    themselves are outbox rows, relayed by workflows.outbox."""
    delivery.prune_seen_requests()
    if not conf.enabled():
        return 0
    ids = delivery.due_message_ids()
    for pk in ids:
        with transaction.atomic():
            enqueue_sync(pk)
    return len(ids)


def _queue() -> str:
    return conf.task_queue() or settings.CELERY_TASK_DEFAULT_QUEUE


def enqueue_sync(message_id: int, *, countdown: float = 0) -> None:
    """Precondition: inside the transaction that makes the sync necessary."""
    outbox.enqueue(SYNC_MESSAGE, message_id, countdown=countdown)


def enqueue_sync_escalation(escalation_id: str) -> None:
    """Precondition: inside the transaction that changed the escalation."""
    outbox.enqueue(SYNC_ESCALATION, escalation_id)


def enqueue_ephemeral(*, escalation_id: str | None, channel: str, user: str, text: str) -> None:
    post_ephemeral.apply_async(args=(escalation_id, channel, user, text), queue=_queue())
