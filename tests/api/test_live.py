"""Against the real daphne server: long-polls, the Python client (sync, async, decorator)."""

import asyncio
import threading
import time

import httpx
import pytest

from api.actions import create_api_token
from caliber_client import (
    ApprovalTimeout,
    AsyncCaliber,
    AuthenticationFailed,
    Blocked,
    Caliber,
    Conflict,
    InvalidRequest,
    NotFound,
    Rejected,
    require_approval,
)
from escalations.actions import decide_escalation
from escalations.models import AgentProfile, AutonomyPolicy, Escalation, Verdict, Via
from tests.conftest import wait_for
from workflows.models import Action, PolicyOutcome

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded, sorry."}


@pytest.fixture
def caliber(live_server_url, agent, policies):
    _, raw = create_api_token(agent=agent)
    with Caliber(live_server_url, raw, agent="triage-agent") as client:
        yield client


@pytest.fixture
def reviewer(live_server_url, agent, alice):
    # A reviewer's tooling has a token of its own agent: the triage agent's never decides.
    console = AgentProfile.objects.create(name="review-console", team=agent.team)
    _, raw = create_api_token(agent=console, reviewer=True, user=alice)
    with Caliber(live_server_url, raw) as client:
        yield client


def decide_soon(user, verdict=Verdict.APPROVE, delay=0.5, **kwargs):
    """Decide the (only) open escalation from another thread, as a person would."""

    def run():
        from django.db import connection

        try:
            escalation = wait_for(lambda: Escalation.objects.filter(status="open").first())
            time.sleep(delay)
            decide_escalation(
                escalation_id=escalation.pk, user=user, verdict=verdict, via=Via.WEB, **kwargs
            )
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_long_poll_returns_as_soon_as_the_action_is_decided(live_server_url, caliber, alice):
    approval = caliber.request_approval("send_reply", REPLY, confidence=0.9)
    assert approval.status == "escalated"
    thread = decide_soon(alice, delay=1.0)
    # The client gives up before the poll's own wait would end (20 s < 60 s): only the
    # decision waking the poll can answer it, however slow the machine is.
    r = httpx.get(
        f"{live_server_url}/api/v1/actions/{approval.id}",
        params={"wait": 60},
        headers=caliber._headers,
        timeout=20,
    )
    thread.join()
    assert r.status_code == 200
    assert r.json()["decided"] is True
    assert r.json()["verdict"] == "approve"


def test_long_polls_do_not_hold_the_server(live_server_url, caliber, alice):
    """Ten clients wait on undecided actions; the server still answers others meanwhile."""
    approvals = [
        caliber.request_approval("send_reply", {**REPLY, "ticket_id": f"T-{i}"}, confidence=0.9)
        for i in range(10)
    ]
    answered = []

    def poll(action_id):
        answered.append(
            httpx.get(
                f"{live_server_url}/api/v1/actions/{action_id}",
                params={"wait": 60},
                headers=caliber._headers,
                timeout=90,
            ).json()
        )

    pollers = [threading.Thread(target=poll, args=(a.id,)) for a in approvals]
    for t in pollers:
        t.start()
    time.sleep(0.5)  # let them connect (not a measurement: later only makes it easier)
    r = httpx.get(
        f"{live_server_url}/api/v1/actions/{approvals[0].id}", headers=caliber._headers, timeout=30
    )
    assert r.status_code == 200
    # Answered while all ten were still held: none of them has returned yet.
    assert answered == []
    assert all(t.is_alive() for t in pollers)
    for approval in approvals:
        decide_escalation(
            escalation_id=Action.objects.get(pk=approval.id).escalation.pk,
            user=alice,
            verdict=Verdict.APPROVE,
            via=Via.WEB,
        )
    for t in pollers:
        t.join()
    assert sorted(a["decided"] for a in answered) == [True] * 10


def test_concurrent_identical_requests_over_http_make_one_action(live_server_url, caliber):
    body = {
        "agent": "triage-agent",
        "action_type": "send_reply",
        "payload": REPLY,
        "confidence": 0.9,
        "idempotency_key": "retry-storm",
    }
    answers = []

    def post():
        answers.append(
            httpx.post(
                f"{live_server_url}/api/v1/actions", json=body, headers=caliber._headers, timeout=30
            )
        )

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert Action.objects.count() == 1
    assert Escalation.objects.count() == 1


def test_daphne_refuses_an_oversized_body_with_413(live_server_url, caliber):
    from api.views import max_body_bytes

    r = httpx.post(
        f"{live_server_url}/api/v1/actions",
        content=b"{" + b" " * max_body_bytes() + b"}",
        headers={**caliber._headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert not Action.objects.exists()


def test_the_client_sees_auto_approval_at_once(caliber):
    approval = caliber.request_approval(
        "update_crm", {"ticket_id": "T-1", "priority": "high"}, confidence=0.95
    )
    assert approval.approved and approval.decided
    assert caliber.wait(approval) is approval
    reported = caliber.report_result(approval.id, result={"ok": True})
    assert reported.status == "executed"


def test_the_client_waits_for_a_rejection_and_tells_why(caliber, alice):
    approval = caliber.request_approval("send_reply", REPLY, confidence=0.9)
    thread = decide_soon(alice, Verdict.REJECT, reason="Wrong customer")
    decided = caliber.wait(approval, timeout=30)
    thread.join()
    assert decided.status == "rejected"
    with pytest.raises(Rejected) as caught:
        decided.raise_unless_approved()
    assert caught.value.reason == "Wrong customer"


def test_waiting_past_the_timeout_raises(caliber):
    approval = caliber.request_approval("send_reply", REPLY, confidence=0.9)
    with pytest.raises(ApprovalTimeout):
        caliber.wait(approval, timeout=0.5)


def test_the_client_raises_clear_errors(live_server_url, caliber, agent):
    with pytest.raises(AuthenticationFailed):
        Caliber(live_server_url, "cal_wrong", agent="triage-agent").request_approval(
            "update_crm", {"ticket_id": "T"}, confidence=0.9
        )
    with pytest.raises(InvalidRequest) as caught:
        caliber.request_approval("wire_money", {}, confidence=0.9)
    assert caught.value.status_code == 422
    with pytest.raises(NotFound):
        caliber.get("00000000-0000-0000-0000-000000000000")
    caliber.request_approval("update_crm", {"ticket_id": "T"}, confidence=0.9, idempotency_key="k")
    with pytest.raises(Conflict):
        caliber.request_approval(
            "update_crm", {"ticket_id": "other"}, confidence=0.9, idempotency_key="k"
        )


def test_a_reviewer_decides_through_the_client(caliber, reviewer):
    approval = caliber.request_approval("send_reply", REPLY, confidence=0.9)
    page = reviewer.escalations(status="open")
    assert [e["id"] for e in page["items"]] == [approval.escalation_id]
    edited = {**REPLY, "body": "Refund sent today."}
    reviewer.decide(approval.escalation_id, "approve", edited_payload=edited)
    assert caliber.wait(approval).payload_to_execute == edited
    with pytest.raises(Conflict) as caught:
        reviewer.decide(approval.escalation_id, "reject", reason="too late")
    assert caught.value.detail.startswith("already approved")


def test_the_decorator_runs_the_function_with_the_edited_arguments(caliber, alice):
    sent = []

    @caliber.require_approval("send_reply", confidence=0.9, summary=lambda p: f"reply to {p['to']}")
    def send_reply(ticket_id: str, to: str, body: str, cc: str = "") -> dict:
        sent.append((ticket_id, to, body, cc))
        return {"message_id": "m-1"}

    edited = {**REPLY, "body": "Edited by a person."}
    thread = decide_soon(alice, edited_payload=edited)
    assert send_reply("T-1", to="ada@example.com", body="Refunded, sorry.") == {"message_id": "m-1"}
    thread.join()
    assert sent == [("T-1", "ada@example.com", "Edited by a person.", "")]
    action = Action.objects.get()
    assert action.rationale == "reply to ada@example.com"
    assert action.status == "executed"
    assert action.result == {"message_id": "m-1"}


def test_the_decorator_raises_rejected_without_running(caliber, alice):
    calls = []

    @caliber.require_approval("send_reply", confidence=0.9)
    def send_reply(ticket_id: str, to: str, body: str) -> None:
        calls.append(1)

    thread = decide_soon(alice, Verdict.REJECT, reason="Do not email this customer")
    with pytest.raises(Rejected, match="Do not email this customer"):
        send_reply(**REPLY)
    thread.join()
    assert calls == []


def test_the_decorator_raises_blocked_when_policy_blocks(caliber, agent):
    AutonomyPolicy.objects.create(
        name="never", agent=agent, action_type="update_crm", outcome=PolicyOutcome.BLOCK
    )

    @caliber.require_approval("update_crm", confidence=0.99)
    def update(ticket_id: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(Blocked):
        update("T-1")


def test_the_decorator_reports_a_failure_and_reraises(caliber):
    @caliber.require_approval("update_crm", confidence=0.99)
    def update(ticket_id: str) -> None:
        raise RuntimeError("CRM is down")

    with pytest.raises(RuntimeError):
        update("T-1")
    action = Action.objects.get()
    assert action.status == "failed"
    assert "CRM is down" in action.error


def test_the_async_client_and_decorator(live_server_url, agent, policies, alice):
    _, raw = create_api_token(agent=agent)
    sent = []

    async def main():
        async with AsyncCaliber(live_server_url, raw, agent="triage-agent") as caliber:
            auto = await caliber.request_approval("update_crm", {"ticket_id": "T"}, confidence=0.9)
            assert auto.status == "auto_approved"

            @require_approval("send_reply", client=caliber, confidence=0.9)
            async def send_reply(ticket_id: str, to: str, body: str) -> str:
                sent.append(body)
                return "ok"

            return await send_reply(**REPLY)

    thread = decide_soon(alice)
    # On a thread of its own: the browser tests leave Playwright's loop on the main thread.
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(asyncio.run(main())))
    runner.start()
    runner.join(60)
    thread.join()
    assert outcome == ["ok"]
    assert sent == [REPLY["body"]]
    assert Action.objects.get(action_type="send_reply").status == "executed"


def test_the_docs_page_and_schema_are_served_offline(live_server_url):
    schema = httpx.get(f"{live_server_url}/api/v1/openapi.json").json()
    assert "/api/v1/actions" in schema["paths"]
    page = httpx.get(f"{live_server_url}/api/v1/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "Content-Security-Policy" in page.headers
    bundle = httpx.get(f"{live_server_url}/api/v1/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert httpx.get(f"{live_server_url}/api/v1/docs/assets/..%2Fsettings.py").status_code == 404
