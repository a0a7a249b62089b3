"""Edit-then-approve and respond in Slack modals: the browser's fields, through the real
signed endpoint, each decided exactly once."""

import json
import time
from typing import Any

import pytest

from escalations.models import Decision, EscalationStatus
from escalations.slack import blocks
from escalations.slack.models import SeenRequest
from workflows.models import Action

from .conftest import click, deliver_all, link, make_escalation, post_signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def esc(slack, agent, policies, alice):
    e = make_escalation(
        agent, payload={"ticket_id": "T-1", "to": "ada@example.com", "body": "Hi Ada,\n\nSorry!"}
    )
    deliver_all()
    link("U_ALICE", alice)
    slack.calls.clear()
    return e


def _submit(esc, callback: str, values: dict[str, Any], *, user: str = "U_ALICE") -> dict:
    return {
        "type": "view_submission",
        "user": {"id": user},
        "team": {"id": "T1"},
        "view": {
            "id": "V2",
            "callback_id": callback,
            "private_metadata": json.dumps({"escalation": str(esc.pk), "channel": "C_SUPPORT"}),
            "state": {"values": values},
        },
    }


def _field(key: str, value: str) -> dict[str, Any]:
    return {
        blocks.field_block_id(key): {
            blocks.FIELD_INPUT: {"type": "plain_text_input", "value": value}
        }
    }


def test_the_message_shows_the_reply_as_an_email_and_offers_edit_and_respond(esc, slack):
    _, shown = blocks.message(esc, for_team_id=esc.team_id, decision=None)
    dumped = json.dumps(shown)
    assert "*To:* ada@example.com" in dumped
    assert "*Subject:* Re: Charged twice" in dumped
    assert ">Hi Ada,\\n>\\n>Sorry!" in dumped  # the body as text, its line breaks kept
    [actions] = [b for b in shown if b["type"] == "actions"]
    ids = [e["action_id"] for e in actions["elements"]]
    assert ids == [blocks.APPROVE, blocks.REJECT, blocks.EDIT, blocks.RESPOND, blocks.OPEN]


def test_edit_opens_a_modal_with_the_renderers_fields_body_first(esc, slack, client):
    assert post_signed(client, click(esc, blocks.EDIT, trigger_id="trig-7")).status_code == 200
    assert not Decision.objects.exists()
    [opened] = slack.calls_to("views.open")
    view = opened.params["view"]
    assert view["callback_id"] == blocks.EDIT_CALLBACK
    inputs = [b for b in view["blocks"] if b["type"] == "input"]
    assert [b["block_id"] for b in inputs] == [
        "field:body",
        "field:to",
        "field:ticket_id",
        blocks.REASON_BLOCK,
    ]
    body = inputs[0]["element"]
    assert body["multiline"] is True and body["initial_value"] == "Hi Ada,\n\nSorry!"
    assert view["submit"]["text"] == "Approve and send"  # irreversible: it says so


def test_an_edited_submission_approves_the_edited_version_exactly_once(esc, slack, client, alice):
    values = {
        **_field("body", "Hi Ada,\n\nWe refunded the duplicate charge."),
        **_field("to", "ada@example.com"),
        **_field("ticket_id", "T-1"),
    }
    payload = _submit(esc, blocks.EDIT_CALLBACK, values)
    response = post_signed(client, payload)
    assert response.status_code == 200 and response.content == b""  # closes the modal
    decision = Decision.objects.get(escalation=esc)
    assert (decision.decided_by, decision.verdict, decision.via) == (alice, "approve", "slack")
    assert decision.edited_payload["body"] == "Hi Ada,\n\nWe refunded the duplicate charge."
    action = Action.objects.get(pk=esc.action_id)
    assert action.payload_to_execute["body"] == "Hi Ada,\n\nWe refunded the duplicate charge."
    # The same submission again, signed anew (Slack retries): decided once, told so.
    time.sleep(1)  # a new timestamp: a new signature, past the replay guard
    again = post_signed(client, payload)
    assert again.json()["response_action"] == "update"
    assert "Too late" in json.dumps(again.json())
    assert Decision.objects.count() == 1
    deliver_all()
    [shown] = slack.all_messages()
    assert "*Approved* with edits by *alice* in Slack" in json.dumps(shown["blocks"])


def test_an_emptied_body_keeps_the_modal_open_with_the_error_under_it(esc, client):
    seen = SeenRequest.objects.count()
    response = post_signed(
        client, _submit(esc, blocks.EDIT_CALLBACK, {**_field("body", "  "), **_field("to", "x")})
    )
    body = response.json()
    assert body["response_action"] == "errors"
    assert body["errors"] == {"field:body": "Body cannot be empty."}
    assert not Decision.objects.exists()
    assert SeenRequest.objects.count() == seen + 1


def test_respond_opens_a_modal_and_its_answer_reaches_the_agent(esc, slack, client, alice):
    post_signed(client, click(esc, blocks.RESPOND))
    [opened] = slack.calls_to("views.open")
    assert opened.params["view"]["callback_id"] == blocks.RESPOND_CALLBACK
    answer = {blocks.REASON_BLOCK: {blocks.REASON_INPUT: {"value": "Offer a coupon instead."}}}
    response = post_signed(client, _submit(esc, blocks.RESPOND_CALLBACK, answer))
    assert response.status_code == 200
    decision = Decision.objects.get(escalation=esc)
    assert (decision.verdict, decision.reason, decision.via) == (
        "respond",
        "Offer a coupon instead.",
        "slack",
    )
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.REJECTED  # stored: the action does not run
    # ... and the message says what it was: an answer, its own verdict, never "rejected".
    deliver_all()
    [shown] = slack.all_messages()
    assert shown["text"].endswith(": answered")
    assert ":speech_balloon: *Answered instead of running* by *alice*" in json.dumps(shown)
    assert "Rejected" not in json.dumps(shown)


def test_an_unsigned_edit_submission_changes_nothing(esc, client):
    from .conftest import form_body

    body = form_body(_submit(esc, blocks.EDIT_CALLBACK, _field("body", "sneaky")))
    response = client.post(
        "/slack/interactions/", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 401
    assert not Decision.objects.exists()


def test_someone_outside_the_team_cannot_edit_it_in_slack(esc, client, bob):
    link("U_BOB", bob)
    response = post_signed(
        client, _submit(esc, blocks.EDIT_CALLBACK, _field("body", "mine now"), user="U_BOB")
    )
    assert "Not yours" in json.dumps(response.json())
    assert not Decision.objects.exists()
