"""The message a reviewer reads in Slack: everything needed to decide, nothing that pings."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from escalations.actions import decide_escalation
from escalations.models import Escalation, Verdict, Via
from escalations.slack import blocks
from escalations.slack.mrkdwn import ZWSP, escape, escape_within

from .conftest import BASE_URL, make_escalation


def _all_mrkdwn(obj):
    if isinstance(obj, dict):
        if obj.get("type") == "mrkdwn":
            yield obj
        for v in obj.values():
            yield from _all_mrkdwn(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_mrkdwn(v)


def _text(rendered) -> str:
    return "\n".join(m["text"] for m in _all_mrkdwn(rendered))


def _buttons(rendered):
    return [b for b in rendered if b["type"] == "actions"]


def render(esc: Escalation):
    esc = Escalation.objects.select_related("team", "action__agent").get(pk=esc.pk)
    decision = getattr(esc, "decision", None) if not esc.is_undecided else None
    return blocks.message(esc, for_team_id=esc.team_id, decision=decision)


@pytest.mark.django_db
def test_the_message_packages_what_a_reviewer_needs_to_decide(slack, agent, policies):
    esc = make_escalation(agent, confidence=0.62)
    Escalation.objects.filter(pk=esc.pk).update(sla_due_at=timezone.now() + timedelta(hours=2))
    esc.refresh_from_db()
    text, rendered = render(esc)
    body = _text(rendered)

    assert rendered[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Review: Send reply to customer", "emoji": True},
    }
    assert esc.summary and escape(esc.summary) in body
    for reason in esc.reasons:
        assert escape(reason) in body
    assert "0.62" in body
    assert "irreversible" in body and "customer-facing" in body
    assert "triage-agent" in body and "Support" in body
    assert f"<!date^{int(esc.sla_due_at.timestamp())}^" in body
    assert "Sorry! Refund on its way." in body and "ada@example.com" in body
    assert "The customer asks about a double charge." in body
    assert f"<{BASE_URL}/review/{esc.pk}/|Open in Caliber>" not in body  # buttons, not a link
    assert "Review needed: Send reply to customer" in text

    [actions] = _buttons(rendered)
    approve, reject, edit, respond, link = actions["elements"]
    assert (approve["action_id"], approve["value"], approve["style"]) == (
        blocks.APPROVE,
        str(esc.pk),
        "primary",
    )
    assert (reject["action_id"], reject["value"], reject["style"]) == (
        blocks.REJECT,
        str(esc.pk),
        "danger",
    )
    assert (edit["action_id"], respond["action_id"]) == (blocks.EDIT, blocks.RESPOND)
    assert link["url"] == f"{BASE_URL}/review/{esc.pk}/"
    # Sending something to a customer cannot be undone: one misclick must not do it.
    assert "confirm" in approve


@pytest.mark.django_db
def test_a_reversible_action_is_approved_without_a_confirmation_step(slack, agent, policies):
    esc = make_escalation(
        agent,
        action_type="route_to_team",
        payload={"ticket_id": "T-1", "team": "billing"},
        confidence=0.3,
    )
    _, rendered = render(esc)
    [actions] = _buttons(rendered)
    assert "confirm" not in actions["elements"][0]
    assert "reversible" in _text(rendered) and "internal" in _text(rendered)


@pytest.mark.django_db
def test_an_amount_at_stake_is_shown(slack, agent, policies):
    esc = make_escalation(
        agent, action_type="issue_refund", payload={"ticket_id": "T-1", "amount": "249.00"}
    )
    assert "amount *249.00*" in _text(render(esc)[1])


@pytest.mark.django_db
def test_no_deadline_is_said_plainly(slack, agent, policies):
    esc = make_escalation(agent)
    Escalation.objects.filter(pk=esc.pk).update(sla_due_at=None)
    esc.refresh_from_db()
    assert "*Decide by*\nno deadline" in _text(render(esc)[1])


@pytest.mark.django_db
def test_agent_text_cannot_ping_anyone_or_forge_links(slack, agent, policies):
    esc = make_escalation(
        agent,
        payload={
            "ticket_id": "T-1",
            "to": "<mailto:evil@example.com|ceo@example.com>",
            "body": "Hey <!channel> and <!here>, ask <@U024BE7LH> & <#C123|general>. @everyone",
        },
        rationale="<!subteam^S123> <https://evil.example|click me>",
    )
    text, rendered = render(esc)
    raw = json.dumps(rendered, ensure_ascii=False) + text
    for dangerous in (
        "<!channel>",
        "<!here>",
        "<@U024BE7LH>",
        "<#C123",
        "<!subteam",
        "<https://evil",
        "<mailto:",
    ):
        assert dangerous not in raw
    body = _text(rendered)
    assert "&lt;!channel&gt;" in body and "&lt;@U024BE7LH&gt;" in body and " &amp; " in body
    assert f"@{ZWSP}everyone" in body
    # Slack must not auto-parse mentions or links inside any mrkdwn object.
    assert all(m.get("verbatim") is True for m in _all_mrkdwn(rendered))


@pytest.mark.django_db
def test_a_decided_escalation_shows_the_outcome_instead_of_buttons(slack, agent, policies, carol):
    esc = make_escalation(agent)
    decide_escalation(
        escalation_id=esc.pk,
        user=carol,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Don't promise <!channel> refunds",
    )
    text, rendered = render(esc)
    assert not _buttons(rendered)
    outcome = next(b for b in rendered if b.get("block_id") == "caliber.outcome")["text"]["text"]
    assert ":x: *Rejected* by *carol* in the browser" in outcome
    assert "<!date^" in outcome
    assert ">Don't promise &lt;!channel&gt; refunds" in outcome
    assert text == "Send reply to customer: rejected"


@pytest.mark.django_db
def test_a_message_left_behind_by_a_team_move_says_where_it_went(slack, agent, policies, billing):
    esc = make_escalation(agent)
    support_id = esc.team_id
    Escalation.objects.filter(pk=esc.pk).update(team=billing)
    esc = Escalation.objects.select_related("team", "action__agent").get(pk=esc.pk)
    _, rendered = blocks.message(esc, for_team_id=support_id, decision=None)
    assert not _buttons(rendered)
    assert "*Moved to Billing*" in _text(rendered)
    # The new team's own message still asks.
    _, theirs = blocks.message(esc, for_team_id=billing.pk, decision=None)
    assert _buttons(theirs)


@pytest.mark.django_db
def test_long_agent_text_is_cut_within_slack_limits(slack, agent, policies):
    esc = make_escalation(
        agent,
        payload={"ticket_id": "T-1", "to": "a@example.com", "body": "&" * 20000},
        rationale="<" * 10000,
    )
    Escalation.objects.filter(pk=esc.pk).update(summary="x" * 9000, reasons=["r" * 900] * 30)
    _, rendered = render(esc)
    assert len(rendered) <= 50
    for block in rendered:
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
        for el in block.get("elements", []) + block.get("fields", []):
            if el.get("type") == "mrkdwn":
                assert len(el["text"]) <= 3000


def test_escaping_follows_slacks_three_entities():
    assert escape("a & b < c > d") == "a &amp; b &lt; c &gt; d"
    assert escape("<@U123>") == "&lt;@U123&gt;"


def test_cutting_never_splits_an_entity():
    out = escape_within("&" * 100, 23)
    assert len(out) <= 23 and out.endswith("…")
    assert out[:-1].replace("&amp;", "") == ""


def test_the_reject_modal_asks_for_a_reason_and_remembers_the_escalation():
    class Esc:
        pk = "0b7e8d5c-7a38-4f0e-9d9c-2f2a7b6c1e11"
        summary = "Send <!here> a reply"

        class action:
            action_type = "send_reply"

    view = blocks.reject_modal(Esc(), channel_id="C1")
    assert view["callback_id"] == blocks.REJECT_CALLBACK
    assert json.loads(view["private_metadata"])["escalation"] == Esc.pk
    [section, reason] = view["blocks"]
    assert "&lt;!here&gt;" in section["text"]["text"]
    assert reason["block_id"] == "reason" and reason["element"]["min_length"] == 1
