"""Celery tasks for escalations: load by id (or scan), call an action. Safe to run twice."""

from __future__ import annotations

from celery import shared_task

from .actions.sla import expire_due_escalations
from .actions.summaries import write_waiting_summaries


@shared_task(name="escalations.tasks.check_slas")
def check_slas() -> dict[str, int]:
    """Beat's SLA scan; every escalation it touches is re-checked under its own lock."""
    return expire_due_escalations()


@shared_task(name="escalations.tasks.write_summaries")
def write_summaries() -> int:
    """Woken once for any number of escalations opened (summaries.want_summary), and run by
    beat as the safety net: writes every model summary waiting."""
    return write_waiting_summaries()


@shared_task(name="escalations.tasks.write_summary")
def write_summary(escalation_id: str) -> int:
    """The one-escalation task this writer replaced: a message sent before it (an outbox row
    relayed late) only runs the writer, which finds that escalation by its row."""
    return write_waiting_summaries()
