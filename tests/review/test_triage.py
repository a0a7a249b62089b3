"""The queue as a triage tool: each row's gist and why, a graded risk, search, bulk decide,
claiming from the queue; and the detail page's cost, pinned."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from escalations.models import Decision, Escalation, EscalationStatus
from tests.review.factories import escalate, logged_in, queue_rows
from workflows.models import Action, TraceEvent

pytestmark = pytest.mark.django_db


def test_a_row_shows_the_customer_line_the_proposals_first_line_and_why_in_a_few_words(
    alice, agent, policies
):
    escalate(
        agent,
        subject="Charged twice",
        body="Hi,\nI was charged twice this month.",
        payload={"ticket_id": "T-1", "to": "ada@example.com", "body": "Hello Ada,\n\nRefunded."},
    )
    html = logged_in(alice).get(reverse("review:queue")).text
    assert "ada@x.io: “Hi,”" in html
    # Its first line after the greeting.
    assert "Reply to ada@example.com: Refunded." in html
    # The policy's sentence, in a few words.
    assert "send_reply is irreversible" not in html
    assert re.search(r"why:</span> irreversible", html)


def test_the_why_differs_with_the_confidence_gap(alice, agent, policies):
    escalate(agent, action_type="update_crm")
    escalate(agent, action_type="route_to_team")
    html = logged_in(alice).get(reverse("review:queue")).text
    assert "confidence 0.40 &lt; 0.70" in html
    assert "confidence 0.20 &lt; 0.50" in html


def test_search_finds_by_customer_ticket_words_and_reply_and_says_how_many(
    alice, agent, policies, django_assert_num_queries
):
    a = escalate(agent, subject="Package arrived damaged", body="The box was crushed.")
    b = escalate(agent, subject="Login fails", body="My account is locked.")
    client = logged_in(alice)
    url = reverse("review:queue")
    assert queue_rows(client.get(url, {"q": "crushed"}).text) == [str(a.pk)]
    assert queue_rows(client.get(url, {"q": "locked account"}).text) == [str(b.pk)]
    # Stemming: "packages" finds "Package".
    assert queue_rows(client.get(url, {"q": "packages"}).text) == [str(a.pk)]
    # Pieces of an address.
    assert set(queue_rows(client.get(url, {"q": "ada"}).text)) == {str(a.pk), str(b.pk)}
    assert queue_rows(client.get(url, {"q": "nothing-like-this"}).text) == []
    html = client.get(url, {"q": "crushed", "risk": "medium"}).text
    assert re.search(r'id="queue-count"[^>]*>1<', html) and "of 2" in html
    assert 'name="q" value="crushed"' in html
    assert '<input type="hidden" name="risk" value="medium">' in html
    assert 'ws-connect="/ws/review/?risk=medium&amp;q=crushed"' in html
    client.get(url, {"q": "crushed"})  # warm
    # session, user, the user's teams, the matching rows (one join), every count (one query)
    with django_assert_num_queries(5):
        client.get(url, {"q": "crushed"})


def _facet_count(html: str, facet: str, value: str) -> int | None:
    m = re.search(
        rf'data-facet="{facet}" data-value="{value}"[^>]*>.*?class="n">(\d+)<', html, re.S
    )
    return int(m.group(1)) if m else None


def test_the_filter_counts_count_the_search_result_not_the_whole_queue(alice, agent, policies):
    escalate(agent, subject="Package arrived damaged", action_type="update_crm")
    escalate(agent, subject="Package lost", action_type="route_to_team")
    escalate(agent, subject="Login fails", action_type="send_reply")
    client = logged_in(alice)
    html = client.get(reverse("review:queue")).text
    assert _facet_count(html, "action_type", "send_reply") == 1
    html = client.get(reverse("review:queue"), {"q": "package"}).text
    assert _facet_count(html, "action_type", "update_crm") == 1
    assert _facet_count(html, "action_type", "route_to_team") == 1
    # Nothing the search does not show is counted.
    assert not _facet_count(html, "action_type", "send_reply")
    assert _facet_count(html, "team", "support") == 2


def test_a_search_matching_past_the_cap_reads_in_queue_order_and_finds_the_same(
    alice, agent, policies, monkeypatch
):
    from review import queue

    made = [
        escalate(agent, subject=f"Package {i}", due_in=timedelta(minutes=10 - i)) for i in range(4)
    ]
    escalate(agent, subject="Login fails")
    client = logged_in(alice)
    expected = [str(e.pk) for e in reversed(made)]
    assert queue_rows(client.get(reverse("review:queue"), {"q": "package"}).text) == expected
    monkeypatch.setattr(queue, "COUNT_CAP", 2)  # four matches: "common" (search.matching)
    html = client.get(reverse("review:queue"), {"q": "package"}).text
    assert queue_rows(html) == expected
    assert re.search(r'id="queue-count"[^>]*>2\+<', html)


def test_search_with_nul_or_junk_is_a_400_or_an_empty_result_never_an_error(alice, agent, policies):
    escalate(agent)
    client = logged_in(alice)
    # A NUL anywhere in a query string is refused before any view (review.errors).
    for junk in ("\x00", "a\x00b"):
        assert client.get(reverse("review:queue"), {"q": junk}).status_code == 400, junk
    for junk in ("'); DROP TABLE x; --", '"unbalanced', "-", "|!&"):
        response = client.get(reverse("review:queue"), {"q": junk})
        assert response.status_code == 200, junk


def test_the_detail_page_costs_a_fixed_number_of_queries(alice, agent, policies):
    esc = escalate(agent)
    client = logged_in(alice)
    url = reverse("review:detail", args=[esc.pk])
    client.get(url)  # warm the session
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    sql = [q["sql"] for q in ctx.captured_queries]
    # session, user; the user's teams and the escalation with its action, run, agent and
    # team (the access helper); the decision; the trace; the steps; Slack delivery problems;
    # the policy's name; the teams to hand it to (a routing would add the agent's team, its
    # "from"; a reply shows none)
    assert len(sql) == 10, "\n".join(q[:140] for q in sql)


def test_the_reply_is_an_email_beside_the_customers_message_not_a_json_string(
    alice, agent, policies
):
    esc = escalate(agent, subject="Charged twice", body="I was <b>charged</b> twice.")
    Action.objects.filter(pk=esc.action_id).update(
        payload={"ticket_id": "T-1", "to": "ada@example.com", "body": "Hi Ada,\n\nI <i>it</i>."}
    )
    html = logged_in(alice).get(reverse("review:detail", args=[esc.pk])).text
    judge = html[html.index('class="card judge"') : html.index('class="card summary"')]
    assert "What the customer wrote" in judge and "I was &lt;b&gt;charged&lt;/b&gt; twice." in judge
    assert '<dd class="email-to">ada@example.com</dd>' in judge
    assert "Re: Charged twice" in judge
    assert '<div class="email-body">Hi Ada,\n\nI &lt;i&gt;it&lt;/i&gt;.</div>' in judge
    assert "\\n" not in judge
    # The body is the editor's wide field, and the one `e` puts the cursor in.
    assert re.search(r'<textarea[^>]*class="wide"[^>]*data-focus="1"[^>]*id="id_p__body"', html)


def test_a_crm_update_is_a_field_diff_and_a_routing_is_from_to_with_the_reason(
    alice, agent, policies
):
    crm = escalate(agent, action_type="update_crm")
    html = logged_in(alice).get(reverse("review:detail", args=[crm.pk])).text
    assert '<table class="field-diff">' in html
    assert "<code>category</code></th><td><del>(not set)</del></td><td><ins>billing</ins>" in html
    route = escalate(agent, action_type="route_to_team")
    html = logged_in(alice).get(reverse("review:detail", args=[route.pk])).text
    assert '<span class="route-from">Support</span>' in html
    assert '<strong class="route-to">Billing</strong>' in html
    assert "Why:</span> because" in html


# --- bulk ------------------------------------------------------------------------------------


def test_bulk_approve_decides_each_once_and_audits_each(alice, agent, policies):
    made = [escalate(agent, action_type="update_crm", subject=f"t{i}") for i in range(5)]
    client = logged_in(alice)
    data = {"ids": [str(e.pk) for e in made], "verdict": "approve", "reason": "batch ok"}
    response = client.post(reverse("review:bulk"), data)
    assert response.status_code == 302
    assert Decision.objects.filter(verdict="approve", via="web", reason="batch ok").count() == 5
    audited = TraceEvent.objects.filter(kind="human", message__contains="approved update_crm")
    assert audited.count() == 5
    # The same form again (a double submit): nothing is decided twice.
    again = client.post(reverse("review:bulk"), data, follow=True)
    assert Decision.objects.count() == 5
    assert "Approved 0; 5 already decided by someone else." in again.text


def test_bulk_approve_of_irreversible_ones_asks_first_showing_each_as_it_will_run(
    alice, agent, policies, settings
):
    settings.UNDO_WINDOW_SECONDS = 10
    reply = escalate(agent)
    crm = escalate(agent, action_type="update_crm")
    client = logged_in(alice)
    data = {"ids": [str(reply.pk), str(crm.pk)], "verdict": "approve", "reason": ""}
    page = client.post(reverse("review:bulk"), data)
    assert page.status_code == 200 and "Approve 2: 1 cannot be undone once it runs" in page.text
    # Exactly what happens: how many are irreversible, and that they wait out the window.
    said = " ".join(re.search(r'class="what-happens">(.*?)</p>', page.text, re.S)[1].split())
    assert said == (
        "Each of the 1 below waits 10 s after you approve, then executes as shown; until then"
        " its page has an Undo that puts it back in the queue. The other 1 you selected can be"
        " reversed later; they run at once."
    )
    assert "the moment" not in page.text and "others in your selection" not in page.text
    assert '<div class="email-body">Hello Ada</div>' in page.text
    assert not Decision.objects.exists()
    done = client.post(reverse("review:bulk"), {**data, "confirm": "irreversible"}, follow=True)
    assert Decision.objects.count() == 2
    # As after a single approval, the page points to the Undo of the irreversible one.
    assert done.redirect_chain[-1][0].startswith(reverse("review:bulk_done"))
    assert "Approved 2." in done.text
    assert f'action="{reverse("review:undo", args=[reply.pk])}"' in done.text
    assert reverse("review:undo", args=[crm.pk]) not in done.text
    assert "Queued: executes in" in done.text


def test_bulk_reject_needs_one_reason_and_skips_what_is_not_mine(alice, bob, agent, policies):
    mine = escalate(agent, action_type="update_crm")
    client = logged_in(bob)  # Billing: not his team's
    client.post(reverse("review:bulk"), {"ids": [str(mine.pk)], "verdict": "reject", "reason": "x"})
    assert not Decision.objects.exists()
    alice_client = logged_in(alice)
    alice_client.post(reverse("review:bulk"), {"ids": [str(mine.pk)], "verdict": "reject"})
    assert not Decision.objects.exists()
    alice_client.post(
        reverse("review:bulk"), {"ids": [str(mine.pk)], "verdict": "reject", "reason": "dup"}
    )
    assert Decision.objects.get().reason == "dup"


# --- claiming from the queue -----------------------------------------------------------------


def test_claiming_from_the_queue_swaps_the_row_and_the_note_not_the_detail_panel(
    alice, carol, agent, policies
):
    esc = escalate(agent)
    response = logged_in(alice).post(
        reverse("review:claim", args=[esc.pk]), {"from": "queue"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert f'<article id="esc-{esc.pk}"' in response.text and 'hx-swap-oob="true"' in response.text
    assert "claimed by you" in response.text
    assert 'id="queue-note"' in response.text
    assert 'id="live-state"' not in response.text and 'id="esc-status"' not in response.text
    late = logged_in(carol).post(
        reverse("review:claim", args=[esc.pk]), {"from": "queue"}, headers={"HX-Request": "true"}
    )
    assert "Not claimed: this escalation was already claimed by alice" in late.text
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.CLAIMED and esc.claimed_by == alice


def test_risk_is_graded_from_the_policy_inputs(db):
    from decimal import Decimal

    from escalations.risk import grade_risk
    from workflows.tools import ACTION_TYPES

    crm, reply, refund = (ACTION_TYPES[n] for n in ("update_crm", "send_reply", "issue_refund"))
    kw = {"amount": None, "max_amount": None}
    assert grade_risk(tool=crm, confidence=0.69, bar=0.7, **kw) == "low"
    assert grade_risk(tool=crm, confidence=0.2, bar=0.7, **kw) == "medium"
    assert grade_risk(tool=reply, confidence=0.9, bar=0.85, **kw) == "medium"
    assert grade_risk(tool=reply, confidence=0.6, bar=0.85, **kw) == "high"
    assert (
        grade_risk(tool=refund, confidence=0.5, bar=0.9, amount=Decimal(300), max_amount=None)
        == "critical"
    )
    assert grade_risk(tool=None, confidence=0.99, bar=0.5, **kw) == "high"
    assert Escalation._meta.get_field("risk").default == "medium"
