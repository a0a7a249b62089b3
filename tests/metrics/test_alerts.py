from datetime import timedelta

import pytest
from django.utils import timezone

from review.metrics.alerts import alert_text, evaluate_alert_rules
from review.metrics.models import AlertIncident, AlertMetric, AlertRule

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
    with django_capture_on_commit_callbacks() as sent:
        assert evaluate_alert_rules() == {"opened": 1, "closed": 0}
        # Still bad on the next evaluations: the same incident, no second alert.
        assert evaluate_alert_rules() == {"opened": 0, "closed": 0}
        decide(propose("send_reply", 0.9), "reject", reason="bad")
        assert evaluate_alert_rules() == {"opened": 0, "closed": 0}
    alerts = [c for c in sent if "evaluate_alert_rules" in c.__qualname__]
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
