"""What the agent API does when an escalation changes (called by escalations.notify, inside
the changing transaction): wake long-polls of its action and queue its agent's webhook."""

from __future__ import annotations

from django.db import transaction

from escalations.models import Escalation


def action_group(action_id: object) -> str:
    return f"api.action.{action_id}"


def escalation_changed(escalation: Escalation) -> None:
    if escalation.is_undecided:
        return
    from review.live import send_to_groups

    from .actions import queue_decision_webhook

    group = action_group(escalation.action_id)
    message = {"type": "action.decided", "id": str(escalation.action_id)}
    transaction.on_commit(lambda: send_to_groups([group], message))
    queue_decision_webhook(escalation)
