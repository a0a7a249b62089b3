import pytest
from django.test import Client
from django.urls import reverse

from escalations.models import Decision, EscalationStatus
from workflows.actions import propose_action
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def escalation(policies, ticket):
    run = WorkflowRun.objects.create(
        workflow="support_triage",
        workflow_version=1,
        agent=policies[1].team.agents.get(),
        input={**ticket, "subject": XSS},
        status=RunStatus.WAITING,
    )
    action = propose_action(
        run=run,
        step_name="propose_actions",
        action_type="send_reply",
        payload={"ticket_id": "T-1", "to": "a@example.com", "body": XSS},
        confidence=0.9,
        rationale=XSS,
    )
    return action.escalation


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_people_are_sent_to_log_in(client, escalation):
    for url in (
        reverse("review:queue"),
        reverse("review:detail", args=[escalation.pk]),
        reverse("runs:list"),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_the_queue_shows_my_teams_escalations(alice, escalation):
    response = _client(alice).get(reverse("review:queue"))
    assert response.status_code == 200
    assert f'id="esc-{escalation.pk}"' in response.text
    assert 'ws-connect="/ws/review/"' in response.text


def test_the_queue_hides_other_teams_escalations(bob, escalation):
    response = _client(bob).get(reverse("review:queue"))
    assert f'id="esc-{escalation.pk}"' not in response.text


def test_another_teams_escalation_is_a_404(bob, escalation):
    client = _client(bob)
    assert client.get(reverse("review:detail", args=[escalation.pk])).status_code == 404
    response = client.post(reverse("review:decide", args=[escalation.pk]), {"verdict": "approve"})
    assert response.status_code == 404
    assert not Decision.objects.exists()


def test_another_teams_run_is_a_404(bob, escalation):
    response = _client(bob).get(reverse("runs:detail", args=[escalation.action.run_id]))
    assert response.status_code == 404


def test_agent_text_is_escaped_everywhere_it_is_shown(alice, escalation):
    client = _client(alice)
    for url in (
        reverse("review:queue"),
        reverse("review:detail", args=[escalation.pk]),
        reverse("runs:detail", args=[escalation.action.run_id]),
        reverse("runs:list"),
    ):
        body = client.get(url).text
        assert "<script>alert" not in body
        assert "<img src=x" not in body
    assert "&lt;script&gt;alert" in client.get(reverse("review:detail", args=[escalation.pk])).text


def test_pages_carry_a_csp_without_inline_script(alice, escalation):
    response = _client(alice).get(reverse("review:queue"))
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_approving_in_the_browser_decides_and_goes_back_to_the_queue(alice, escalation):
    response = _client(alice).post(
        reverse("review:decide", args=[escalation.pk]), {"verdict": "approve"}
    )
    assert response.status_code == 302
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.APPROVED
    assert Decision.objects.get().via == "web"


def test_rejecting_without_a_reason_is_refused_and_changes_nothing(alice, escalation):
    response = _client(alice).post(
        reverse("review:decide", args=[escalation.pk]), {"verdict": "reject", "reason": ""}
    )
    assert response.status_code == 400
    assert "Say why you reject it" in response.text
    assert not Decision.objects.exists()


def test_an_edited_payload_that_is_not_json_is_refused(alice, escalation):
    response = _client(alice).post(
        reverse("review:decide", args=[escalation.pk]),
        {"verdict": "approve", "edited_payload": "{not json"},
    )
    assert response.status_code == 400
    assert "Not valid JSON" in response.text
    assert not Decision.objects.exists()


def test_a_post_without_csrf_token_changes_nothing(alice, escalation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("review:decide", args=[escalation.pk]), {"verdict": "approve"})
    assert response.status_code == 403
    assert not Decision.objects.exists()


def test_the_second_tab_sees_who_decided_instead_of_an_error(alice, carol, escalation):
    _client(carol).post(reverse("review:decide", args=[escalation.pk]), {"verdict": "approve"})
    response = _client(alice).post(
        reverse("review:decide", args=[escalation.pk]),
        {"verdict": "reject", "reason": "no"},
        follow=True,
    )
    assert response.status_code == 200
    assert "already approved by carol via web" in response.text
    assert "Approved</strong> by carol" in response.text
    assert Decision.objects.count() == 1


def test_healthz_reports_each_dependency(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() | {"mode": "x"} == {
        "status": "ok",
        "mode": "x",
        "database": "ok",
        "broker": "ok",
        "channel_layer": "ok",
    }


def test_runs_list_filters_by_status(alice, escalation):
    client = _client(alice)
    assert escalation.action.run.title.startswith("&lt;") is False
    assert "T-000001" not in client.get(reverse("runs:list") + "?status=succeeded").text
    body = client.get(reverse("runs:list") + "?status=waiting").text
    assert reverse("runs:detail", args=[escalation.action.run_id]) in body
