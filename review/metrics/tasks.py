from __future__ import annotations

from typing import Any

from celery import shared_task

from .alerts import evaluate_alert_rules, notify
from .models import AlertIncident
from .rollups import compact


@shared_task(name="metrics.evaluate_alerts")
def evaluate_alerts() -> dict[str, int]:
    return evaluate_alert_rules()


@shared_task(name="metrics.notify_incident", bind=True, max_retries=6)
def notify_incident(self: Any, incident_id: int) -> None:
    incident = (
        AlertIncident.objects.select_related("rule__agent__team", "rule__team")
        .filter(pk=incident_id)
        .first()
    )
    if incident is None:
        return
    if not notify(incident):
        raise self.retry(countdown=min(300, 5 * 2**self.request.retries))


@shared_task(name="metrics.compact_rollups")
def compact_rollups() -> int:
    return compact()
