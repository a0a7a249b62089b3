"""Degradation alerts: evaluate each rule's rate over its window; open one incident when it
leaves its band, close it when it returns. The owner team hears about it once per incident.

The post is an outbox row written with the incident (it survives the broker being down at
commit), retried on the one delivery policy (workflows.retry.DELIVERY)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from escalations.models import AgentProfile
from escalations.slack import conf
from escalations.slack.delivery import call
from escalations.slack.mrkdwn import escape
from workflows import outbox
from workflows.retry import DELIVERY

from .models import AlertIncident, AlertMetric, AlertRule
from .queries import Scope, action_figures, decision_figures, run_figures

log = logging.getLogger(__name__)

NOTIFY_TASK = "metrics.notify_incident"


def measure(rule: AlertRule, now: datetime) -> tuple[float | None, int]:
    """The rule's rate over its window, and how many events it rests on."""
    scope = Scope(
        since=now - timedelta(minutes=rule.window_minutes),
        until=now,
        workflow=rule.workflow,
        agent_id=rule.agent_id,
    )
    if rule.metric == AlertMetric.APPROVAL_RATE:
        d = decision_figures(scope)
        return d["approval_rate"], d["total"]
    if rule.metric == AlertMetric.OVERRIDE_RATE:
        d = decision_figures(scope)
        return d["override_rate"], d["total"]
    if rule.metric == AlertMetric.ESCALATION_RATE:
        a = action_figures(scope)
        return a["escalation_rate"], a["total"]
    r = run_figures(scope)
    return (r["failed"] / r["finished"] if r["finished"] else None), r["finished"]


def evaluate_alert_rules(*, now: datetime | None = None) -> dict[str, int]:
    """Open, update or close incidents. Safe to run concurrently and repeatedly."""
    # Here: drift posts its alerts through this module (NOTIFY_TASK), a cycle at import.
    from .drift import evaluate_drift_rules

    now = now or timezone.now()
    drift = evaluate_drift_rules(now=now)
    opened, closed = drift["opened"], 0
    rules = AlertRule.objects.filter(enabled=True).exclude(metric=AlertMetric.CALIBRATION_DRIFT)
    for rule in rules.select_related("agent"):
        value, samples = measure(rule, now)
        breached = value is not None and samples >= rule.min_samples and rule.breached_by(value)
        with transaction.atomic():
            open_incident = (
                AlertIncident.objects.select_for_update()
                .filter(rule=rule, subject="", closed_at__isnull=True)
                .first()
            )
            if breached and open_incident is None:
                assert value is not None
                try:
                    with transaction.atomic():
                        incident = AlertIncident.objects.create(
                            rule=rule,
                            value_at_open=value,
                            last_value=value,
                            samples=samples,
                            opened_at=now,
                        )
                except IntegrityError:
                    continue  # another evaluator opened it a moment ago
                opened += 1
                outbox.enqueue(NOTIFY_TASK, incident.pk)
            elif breached and open_incident is not None:
                assert value is not None
                open_incident.last_value = value
                open_incident.samples = samples
                open_incident.save(update_fields=["last_value", "samples"])
            elif not breached and open_incident is not None and value is not None:
                open_incident.closed_at = now
                open_incident.last_value = value
                open_incident.save(update_fields=["closed_at", "last_value"])
                closed += 1
    return {"opened": opened, "closed": closed}


def alert_text(incident: AlertIncident) -> str:
    rule = incident.rule
    if rule.metric == AlertMetric.CALIBRATION_DRIFT:
        return f":rotating_light: Caliber alert — {rule.name}: {incident.detail}"
    band = " and ".join(
        part
        for part in (
            f"at least {rule.lower_bound:.0%}" if rule.lower_bound is not None else "",
            f"at most {rule.upper_bound:.0%}" if rule.upper_bound is not None else "",
        )
        if part
    )
    scope = rule.agent.name if rule.agent else (rule.workflow or "all agents")
    return (
        f":rotating_light: Caliber alert — {rule.name}: {rule.get_metric_display().lower()} "
        f"for {scope} is {incident.value_at_open:.0%} over the last {rule.window_minutes} min "
        f"({incident.samples} events); expected {band}."
    )


def deliver_incident(*, incident_id: int) -> float | None:
    """One attempt at telling the team; on a transient failure the next one is scheduled
    (an outbox row, written with the attempt's count). The seconds until it, or None."""
    incident = (
        AlertIncident.objects.select_related("rule__agent__team", "rule__team")
        .filter(pk=incident_id)
        .first()
    )
    if incident is None or notify(incident):
        return None
    with transaction.atomic():
        incident = AlertIncident.objects.select_for_update().get(pk=incident_id)
        incident.notify_attempts += 1
        delay = DELIVERY.next_delay(incident.notify_attempts)
        if delay is None:
            incident.notify_error = (
                f"gave up after {incident.notify_attempts} attempts: {incident.notify_error}"
            )
        else:
            outbox.enqueue(NOTIFY_TASK, incident_id, countdown=delay)
        incident.save(update_fields=["notify_attempts", "notify_error"])
    return delay


def notify(incident: AlertIncident) -> bool:
    """Post the alert to the team's Slack channel once. Returns False to ask for a retry."""
    if incident.notified_at is not None:
        return True
    rule = incident.rule
    team = rule.team or (rule.agent.team if rule.agent else None)
    if team is None and incident.subject:
        # A rule over every agent: the drifting agent's owner team hears about it.
        agent = AgentProfile.objects.filter(name=incident.subject.split("/")[0]).first()
        team = agent.team if agent is not None else None
    if not conf.enabled() or team is None or not team.slack_channel:
        AlertIncident.objects.filter(pk=incident.pk).update(
            notify_error="shown on the dashboard only: no Slack channel for this alert"
        )
        return True
    attempt, _ = call(
        "chat.postMessage", channel=team.slack_channel, text=escape(alert_text(incident))
    )
    if attempt.ok:
        AlertIncident.objects.filter(pk=incident.pk, notified_at__isnull=True).update(
            notified_at=timezone.now(), notify_error=""
        )
        return True
    AlertIncident.objects.filter(pk=incident.pk).update(notify_error=attempt.error)
    return attempt.permanent
