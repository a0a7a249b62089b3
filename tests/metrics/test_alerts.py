from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from review.metrics.alerts import NOTIFY_TASK, alert_text, deliver_incident, evaluate_alert_rules
from review.metrics.models import AlertIncident, AlertMetric, AlertRule
from workflows.models import Outbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def rule(agent):
    return AlertRule.objects.create(
        name="approvals dropping",
        metric=AlertMetric.APPROVAL_RATE,
        agent=agent,
        window_minutes=60,
        min_samples=4,
        lower_bound=0.5,
    )


def test_an_alert_fires_once_per_incident_and_clears(
    rule, propose, decide, policies, django_capture_on_commit_callbacks
):
    for _ in range(4):
        decide(propose("send_reply", 0.9), "reject", reason="bad")
    Outbox.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=False):
        assert evaluate_alert_rules() == {"opened": 1, "closed": 0}
        # Still bad on the next evaluations: the same incident, no second alert.
        assert evaluate_alert_rules() == {"opened": 0, "closed": 0}
        decide(propose("send_reply", 0.9), "reject", reason="bad")
        assert evaluate_alert_rules() == {"opened": 0, "closed": 0}
    alerts = Outbox.objects.filter(task=NOTIFY_TASK)
    assert len(alerts) == 1
    incident = AlertIncident.objects.get()
    assert incident.value_at_open == 0.0
    assert incident.samples == 5

    for _ in range(20):
        decide(propose("send_reply", 0.9), "approve")
    assert evaluate_alert_rules() == {"opened": 0, "closed": 1}
    incident.refresh_from_db()
    assert incident.closed_at is not None
    assert AlertIncident.objects.count() == 1


def test_too_few_events_are_not_judged(rule, propose, decide, policies):
    decide(propose("send_reply", 0.9), "reject", reason="bad")
    assert evaluate_alert_rules() == {"opened": 0, "closed": 0}


def test_events_outside_the_window_do_not_count(rule, propose, decide, policies):
    for _ in range(4):
        decide(propose("send_reply", 0.9), "reject", reason="bad")
    later = timezone.now() + timedelta(hours=3)
    assert evaluate_alert_rules(now=later) == {"opened": 0, "closed": 0}


def test_the_alert_says_what_moved_and_the_band(rule, propose, decide, policies):
    for _ in range(4):
        decide(propose("send_reply", 0.9), "reject", reason="bad")
    evaluate_alert_rules()
    text = alert_text(AlertIncident.objects.get())
    assert "human approval rate for triage-agent is 0%" in text
    assert "expected at least 50%" in text


def test_a_rule_without_bounds_is_invalid(agent):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        AlertRule(name="x", metric=AlertMetric.FAILURE_RATE, agent=agent).full_clean()


def _breach(propose, decide) -> None:
    for _ in range(4):
        decide(propose("send_reply", 0.9), "reject", reason="bad")


def test_an_alert_survives_the_broker_being_down_at_commit(
    rule, propose, decide, policies, django_capture_on_commit_callbacks
):
    from workflows import outbox

    _breach(propose, decide)
    Outbox.objects.all().delete()
    down = mock.patch("workflows.outbox.send", side_effect=ConnectionError("broker down"))
    with down, django_capture_on_commit_callbacks(execute=True):
        assert evaluate_alert_rules() == {"opened": 1, "closed": 0}
    incident = AlertIncident.objects.get()
    # The after-commit send failed; the post is still owed, not lost.
    [row] = Outbox.objects.all()
    assert (row.task, row.args, row.attempts) == (NOTIFY_TASK, [incident.pk], 1)
    assert "broker down" in row.last_error

    sent = []
    later = timezone.now() + timedelta(minutes=10)
    with (
        mock.patch("workflows.outbox.send", side_effect=lambda *a: sent.append(a)),
        mock.patch("workflows.outbox.timezone.now", return_value=later),
    ):
        assert outbox.relay_due(grace_seconds=1) == 1
    assert sent == [(NOTIFY_TASK, [incident.pk], mock.ANY)]
    assert not Outbox.objects.exists()


def test_a_failed_alert_post_is_retried_on_the_delivery_policy_then_given_up(
    rule, propose, decide, policies, slack, support
):
    from workflows.retry import DELIVERY

    rule.team = support
    rule.save(update_fields=["team"])
    _breach(propose, decide)
    evaluate_alert_rules()
    incident = AlertIncident.objects.get()
    Outbox.objects.all().delete()
    tries = DELIVERY.max_attempts
    slack.fail_next("chat.postMessage", "internal_error", status=500, times=tries)
    with mock.patch("workflows.retry.random.uniform", return_value=1.0):  # no jitter
        delays = [deliver_incident(incident_id=incident.pk) for _ in range(tries)]
    # The waits every webhook and Slack message gets, each one an outbox row.
    assert delays == [2, 4, 8, 16, 32, 64, 128, None]
    waits = [(r.available_at - r.created_at).total_seconds() for r in Outbox.objects.order_by("id")]
    assert [round(w) for w in waits] == delays[:-1]
    incident.refresh_from_db()
    assert incident.notified_at is None and incident.notify_attempts == tries
    assert incident.notify_error.startswith(f"gave up after {tries} attempts")

    # Once Slack answers, the team hears it once.
    AlertIncident.objects.filter(pk=incident.pk).update(notify_attempts=0)
    assert deliver_incident(incident_id=incident.pk) is None
    incident.refresh_from_db()
    assert incident.notified_at is not None
    assert len(slack.calls_to("chat.postMessage")) == tries + 1
