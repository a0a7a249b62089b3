import pytest
from django.test import Client
from django.urls import reverse

from workflows.models import Outcome

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_dashboard_needs_a_login(client):
    assert client.get(reverse("metrics:dashboard")).status_code == 302


def test_the_dashboard_renders_figures_and_charts(admin_user, propose, decide, policies):
    decide(propose("send_reply", 0.95), "approve")
    propose("update_crm", 0.9)
    body = _client(admin_user).get(reverse("metrics:dashboard") + "?period=30").text
    assert 'class="chart"' in body and "<polyline" in body
    assert "Calibration" in body and "send_reply" in body
    assert "Recommender" in body


@pytest.mark.parametrize("query", ["", "?action_type=send_reply"])
def test_the_period_select_shows_the_period_the_figures_cover(admin_user, query):
    body = _client(admin_user).get(reverse("metrics:dashboard") + query).text
    assert '<option value="7" selected>last 7 days</option>' in body
    assert '<option value="1" selected>' not in body


def test_a_bad_filter_is_a_clear_400(admin_user):
    response = _client(admin_user).get(reverse("metrics:dashboard") + "?workflow=nope")
    assert response.status_code == 400
    assert "no workflow named" in response.text


def test_a_reviewer_marks_an_autonomous_action_wrong(alice, propose, policies):
    action = propose("update_crm", 0.9)
    response = _client(alice).post(
        reverse("metrics:judge", args=[action.pk]), {"quality": "bad", "note": "wrong category"}
    )
    assert response.status_code == 302
    outcome = Outcome.objects.get()
    assert (outcome.action_id, outcome.quality, outcome.source, outcome.recorded_by) == (
        action.pk,
        "bad",
        "reviewer",
        "alice",
    )


def test_an_outsider_cannot_judge_another_teams_action(bob, propose, policies):
    action = propose("update_crm", 0.9)
    assert (
        _client(bob)
        .post(reverse("metrics:judge", args=[action.pk]), {"quality": "bad"})
        .status_code
        == 404
    )
    assert not Outcome.objects.exists()


def test_prometheus_needs_a_token_or_staff(client, settings, admin_user, alice):
    settings.METRICS_TOKEN = "s3cret"
    url = reverse("metrics:prometheus")
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert _client(alice).get(url).status_code == 401
    ok = client.get(url, HTTP_AUTHORIZATION="Bearer s3cret")
    assert ok.status_code == 200
    assert _client(admin_user).get(url).status_code == 200


def test_prometheus_exposes_queue_depth_runs_latency_and_lag(
    client, settings, propose, decide, policies
):
    settings.METRICS_TOKEN = "t"
    decide(propose("send_reply", 0.9), "approve")
    propose("send_reply", 0.9)
    text = client.get(reverse("metrics:prometheus"), HTTP_AUTHORIZATION="Bearer t").text
    assert 'caliber_queue_depth{status="open",team="support"} 1.0' in text
    assert 'caliber_runs{status="waiting"} 2.0' in text
    assert "caliber_decision_latency_seconds_count 1.0" in text
    assert "caliber_worker_lag_seconds" in text


def _tables(ctx) -> list[str]:
    """The first table each statement reads."""
    import re

    found = [
        re.search(r'FROM "(\w+)"', q["sql"]) or re.search(r"FROM (\w+)", q["sql"])
        for q in ctx.captured_queries
    ]
    return [m[1] if m else "?" for m in found]


def test_the_dashboard_costs_26_queries_however_much_history_there_is(
    admin_user, propose, decide, policies
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _client(admin_user)
    url = reverse("metrics:dashboard")

    def history(n: int) -> None:
        for i in range(n):
            decide(propose("send_reply", 0.5 + i / 30), ("approve", "reject")[i % 2], reason="no")
            propose("update_crm", 0.9)

    def measured() -> list[str]:
        # The recommender's figures are cached until the next decision: the first view after
        # one pays two queries per action type with enough evidence; every other, none.
        client.get(url)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return _tables(ctx)

    history(12)
    some = measured()
    history(12)
    assert (
        measured()
        == some
        == [
            "django_session",
            "auth_user",
            "metrics_runday",  # runs by status: whole days from the rollup...
            "metrics_rundelta",  # ... plus the deltas not folded in yet
            "workflows_deadletter",  # dead-lettered steps
            "metrics_actionday",  # actions by outcome, type, agent, workflow, day
            "metrics_actiondelta",
            "escalations_agentprofile",  # agent names for the breakdown
            "metrics_decisionday",  # decisions by verdict and confidence bin (calibration too)
            "metrics_decisiondelta",
            "escalations_decision",  # the latest decision: the recommender's cache key (a hit)
            "escalations_policycachestamp",  # the recommender's policies: cache current?
            "escalations_decision",  # time to decision, p50 and p95
            "escalations_escalation",  # SLA breaches
            "metrics_modelcallday",  # model cost
            "metrics_modelcalldelta",
            "workflows_workflowrun",  # failure cases: runs handed to a person...
            "workflows_workflowrun",  # ... failed runs...
            "escalations_decision",  # ... rejected decisions (ids, newest first)...
            "escalations_decision",  # ... and those, with their actions
            "workflows_outcome",  # ... and bad outcomes
            "workflows_outcome",  # outcome quality, autonomous
            "workflows_outcome",  # outcome quality, reviewed
            "workflows_action",  # recent autonomous actions, to judge
            "escalations_agentprofile",  # the filter form's agent choices
            "metrics_alertincident",  # open alerts
        ]
    )
