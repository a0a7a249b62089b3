"""A long-poll is woken by the decision's message on the channel layer, not found by its
periodic re-read of the database: here the re-read never comes within the wait."""

from __future__ import annotations

import threading
import time

import pytest

from api import views
from escalations.actions import decide_escalation
from escalations.models import Escalation, Verdict, Via

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 20
REPLY = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded, sorry."}


def test_a_decision_wakes_the_long_poll_on_the_layer_it_is_published_on(
    api, policies, alice, monkeypatch
):
    # The poll's own re-read comes only when its wait ends (it re-reads then, and answers
    # decided, WAIT seconds in): answered before that, it was woken by the decision's
    # message, sent after commit by api.hooks.wake_long_polls.
    monkeypatch.setattr(views, "LONG_POLL_RECHECK_SECONDS", 600.0)
    created = api.post(
        "/actions",
        {
            "agent": "triage-agent",
            "action_type": "send_reply",
            "payload": REPLY,
            "confidence": 0.9,
            "idempotency_key": "wake-1",
        },
    ).json()
    assert created["status"] == "escalated", created
    escalation = Escalation.objects.get(action_id=created["id"])

    def decide() -> None:
        from django.db import connection  # this thread's own connection, closed after

        try:
            time.sleep(1.0)  # the poll is subscribed and waiting by then
            decide_escalation(
                escalation_id=escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
            )
        finally:
            connection.close()

    thread = threading.Thread(target=decide)
    thread.start()
    started = time.monotonic()
    try:
        r = api.get(f"/actions/{created['id']}", wait=WAIT)
    finally:
        answered = time.monotonic() - started
        thread.join()
    assert r.status_code == 200, r.content
    assert r.json()["decided"] is True, r.json()
    # Not a latency figure: anything under WAIT can only have come from the message.
    assert answered < WAIT - 5, f"answered after {answered:.1f}s: by the re-read, not woken"
