"""What the agent API does when an escalation is decided (subscribed in api.apps to
escalations.notify's events): queue its agent's webhook in the deciding transaction, and
wake long-polls of its action after commit."""

from __future__ import annotations

from escalations.models import Escalation
from review.live import send_to_groups
from workflows.events import Event

from .actions.webhook_delivery import queue_decision_webhook


def action_group(action_id: object) -> str:
    return f"api.action.{action_id}"


def queue_webhook(event: Event) -> None:
    """In the deciding transaction: the webhook's delivery row is its outbox."""
    if event.ids["decided"]:
        escalation: Escalation = event.subject
        queue_decision_webhook(escalation)


def wake_long_polls(event: Event) -> None:
    """After commit."""
    if event.ids["decided"]:
        action_id = event.ids["action_id"]
        send_to_groups([action_group(action_id)], {"type": "action.decided", "id": action_id})
