"""Celery tasks for escalations: load by id (or scan), call an action. Safe to run twice."""

from __future__ import annotations

from celery import shared_task

from .actions.sla import expire_due_escalations
from .actions.summaries import write_model_summary


@shared_task(name="escalations.tasks.check_slas")
def check_slas() -> dict[str, int]:
    """Beat's SLA scan; every escalation it touches is re-checked under its own lock."""
    return expire_due_escalations()


@shared_task(name="escalations.tasks.write_summary")
def write_summary(escalation_id: str) -> bool:
    """Sent through the outbox once the escalation committed (escalate_action)."""
    return write_model_summary(escalation_id=escalation_id)
