"""Two things a person does that the API once hid or could not do: an answer (Respond) is
reported as its own verdict, `answered`, never `rejected`; and an approval waiting out its
undo window can be taken back through a reviewer token, as in the browser and Slack."""

import json
from datetime import timedelta
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from api.actions import create_api_token
from api.models import AgentWebhook, WebhookDelivery
from escalations.actions import decide_escalation
from escalations.models import Decision, EscalationStatus, Verdict, Via
from tests.review.factories import escalate
from workflows.models import Action, ActionStatus, TraceKind

from .conftest import Api, reply_body

pytestmark = pytest.mark.django_db


# --- Respond is `answered` -------------------------------------------------------------------


@pytest.fixture
def answered(api, reviewer_api, policies):
    submitted = api.post("/actions", reply_body()).json()
    r = reviewer_api.post(
        f"/escalations/{submitted['escalation_id']}/decision",
        {"verdict": "respond", "reason": "Ask for their order number first."},
    )
    assert r.status_code == 201, r.content
    return submitted, r.json()


def test_an_answer_is_reported_as_answered_not_rejected(api, reviewer_api, answered):
    submitted, decided = answered
    assert decided["status"] == "answered"
    assert decided["action"]["status"] == "answered"
    assert decided["decision"]["verdict"] == "respond"
    seen = api.get(f"/actions/{submitted['id']}").json()
    assert (seen["status"], seen["escalation_status"], seen["verdict"]) == (
        "answered",
        "answered",
        "respond",
    )
    assert seen["reason"] == "Ask for their order number first."
    assert seen["decided"] is True


def test_answered_and_rejected_are_told_apart_in_the_list(api, reviewer_api, answered, alice):
    other = api.post("/actions", reply_body(idempotency_key="reply-2")).json()
    decide_escalation(
        escalation_id=other["escalation_id"],
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Wrong customer.",
    )
    [only_answered] = reviewer_api.get("/escalations", status="answered").json()["items"]
    assert only_answered["id"] == answered[0]["escalation_id"]
    [only_rejected] = reviewer_api.get("/escalations", status="rejected").json()["items"]
    assert only_rejected["id"] == other["escalation_id"]
    assert only_rejected["status"] == "rejected"


def test_a_second_decision_after_an_answer_is_told_it_was_answered(reviewer_api, answered):
    r = reviewer_api.post(
        f"/escalations/{answered[0]['escalation_id']}/decision", {"verdict": "approve"}
    )
    assert r.status_code == 409
    assert r.json()["escalation_status"] == "answered"
    assert r.json()["detail"].startswith("already answered by alice")


def test_the_schema_names_answered_among_the_statuses(client):
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "answered" in schema["ActionOut"]["properties"]["status"]["enum"]
    assert "answered" in schema["EscalationOut"]["properties"]["status"]["enum"]


def test_the_webhook_payload_says_answered(api, reviewer_api, policies, agent):
    AgentWebhook.objects.create(agent=agent, url="http://127.0.0.1:9/hook")
    submitted = api.post("/actions", reply_body()).json()
    reviewer_api.post(
        f"/escalations/{submitted['escalation_id']}/decision",
        {"verdict": "respond", "reason": "Ask for the order number."},
    )
    [delivery] = WebhookDelivery.objects.all()
    sent = json.loads(delivery.body)["action"]
    assert (sent["status"], sent["escalation_status"], sent["verdict"]) == (
        "answered",
        "answered",
        "respond",
    )


# --- Undo through the API --------------------------------------------------------------------


@pytest.fixture
def approved(agent, policies, alice, settings):
    """A reply in a waiting run, approved by alice; its minute's undo window running."""
    settings.UNDO_WINDOW_SECONDS = 60
    esc = escalate(agent)
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    return esc


def test_a_reviewer_token_undoes_its_persons_approval_once(reviewer_api, approved):
    r = reviewer_api.post(f"/escalations/{approved.pk}/undo")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "open"
    assert r.json()["decision"] is None
    action = Action.objects.get(pk=approved.action_id)
    assert action.status == ActionStatus.ESCALATED and action.execute_after is None
    [undo] = action.run.trace.filter(kind=TraceKind.HUMAN, message__contains="undid")
    assert (undo.actor, undo.data["via"]) == ("alice", "api")
    # Again (a retry, a double click): nothing more happens.
    again = reviewer_api.post(f"/escalations/{approved.pk}/undo")
    assert again.status_code == 409
    assert again.json()["detail"] == "Not undone: it is open, not an approval waiting to run."
    assert action.run.trace.filter(message__contains="undid").count() == 1


def test_an_undo_after_the_window_is_409_and_changes_nothing(reviewer_api, approved):
    later = timezone.now() + timedelta(seconds=61)
    with mock.patch("django.utils.timezone.now", return_value=later):
        r = reviewer_api.post(f"/escalations/{approved.pk}/undo")
    assert r.status_code == 409
    assert "undo window is over" in r.json()["detail"]
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED
    assert Decision.objects.filter(escalation=approved).exists()
    assert Action.objects.get(pk=approved.action_id).status == ActionStatus.APPROVED


def test_only_the_approvers_token_undoes(console_agent, approved, carol):
    _, raw = create_api_token(agent=console_agent, reviewer=True, user=carol)
    r = Api(Client(), raw).post(f"/escalations/{approved.pk}/undo")
    assert r.status_code == 403
    assert "only alice" in r.json()["detail"]
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED


def test_the_agents_own_token_never_undoes(agent, approved, alice):
    _, raw = create_api_token(agent=agent, reviewer=True, user=alice)
    r = Api(Client(), raw).post(f"/escalations/{approved.pk}/undo")
    assert r.status_code == 403
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED


def test_an_agent_token_without_reviewer_rights_cannot_undo(api, approved):
    assert api.post(f"/escalations/{approved.pk}/undo").status_code == 403
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED


def test_the_client_raises_answered_with_the_answer(api, answered):
    from caliber_client import Answered, Approval, Rejected

    seen = Approval.from_json(api.get(f"/actions/{answered[0]['id']}").json())
    assert seen.answered and not seen.approved
    with pytest.raises(Answered) as raised:
        seen.raise_unless_approved()
    assert raised.value.answer == "Ask for their order number first."
    assert isinstance(raised.value, Rejected)  # `except Rejected` still stops the call


def _through_django(client: Client):
    """An httpx transport that hands each request to the real app (Django's test client)."""
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        response = client.generic(
            request.method,
            request.url.raw_path.decode(),
            data=request.content,
            content_type=request.headers.get("content-type", "application/json"),
            headers={"Authorization": request.headers["authorization"]},
        )
        return httpx.Response(response.status_code, content=response.content)

    return httpx.MockTransport(handle)


def test_the_client_undoes_once_and_says_conflict_after(console_agent, approved, alice):
    from caliber_client import Caliber, Conflict

    _, raw = create_api_token(agent=console_agent, reviewer=True, user=alice)
    with Caliber("http://caliber.test", raw, transport=_through_django(Client())) as caliber:
        assert caliber.undo(str(approved.pk))["status"] == "open"
        with pytest.raises(Conflict, match="it is open, not an approval waiting to run"):
            caliber.undo(str(approved.pk))
    assert Action.objects.get(pk=approved.action_id).status == ActionStatus.ESCALATED
