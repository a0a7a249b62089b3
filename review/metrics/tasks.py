from __future__ import annotations

from celery import shared_task

from .alerts import deliver_incident, evaluate_alert_rules
from .rollups import compact


@shared_task(name="metrics.evaluate_alerts")
def evaluate_alerts() -> dict[str, int]:
    return evaluate_alert_rules()


@shared_task(name="metrics.notify_incident")
def notify_incident(incident_id: int) -> None:
    """Retries are outbox rows written by the attempt that failed (alerts.deliver_incident)."""
    deliver_incident(incident_id=incident_id)


@shared_task(name="metrics.compact_rollups")
def compact_rollups() -> int:
    return compact()
