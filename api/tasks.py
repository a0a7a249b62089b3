"""Celery tasks of the agent API: load by id, call an action, own the retries."""

from __future__ import annotations

from celery import shared_task

from . import actions


@shared_task(name="api.tasks.deliver_webhook")
def deliver_webhook(delivery_id: str) -> None:
    """Retries are outbox rows written with the attempt that failed."""
    actions.attempt_webhook_delivery(delivery_id=delivery_id)


@shared_task(name="api.tasks.requeue_stalled_webhooks")
def requeue_stalled_webhooks() -> int:
    """For celery beat (e.g. every minute): deliveries whose task was lost are sent again."""
    return actions.requeue_stalled_deliveries()
