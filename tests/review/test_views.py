from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from escalations.actions import claim_escalation, decide_escalation
from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
from tests.review.factories import escalate, logged_in, queue_rows
from workflows.models import Action, TraceEvent

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def escalation(agent, policies):
    return escalate(agent, subject=XSS, body=XSS)


def _confirmed(client: Client, url: str, data: dict[str, str]):
    """Post, then confirm the irreversible approval the way the page's button does."""
    first = client.post(url, data)
    assert first.status_code == 200 and "cannot be undone" in first.text
    digest = re.search(r'name="confirm" value="([0-9a-f]+)"', first.text)
    assert digest, "no confirm step"
    return client.post(url, {**data, "confirm": digest.group(1)})


def test_anonymous_people_are_sent_to_log_in(client, escalation):
    for url in (
        reverse("review:queue"),
        reverse("review:detail", args=[escalation.pk]),
        reverse("runs:list"),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    response = client.post(reverse("review:claim", args=[escalation.pk]))
    assert response.status_code == 302
    assert Escalation.objects.get().claimed_by is None


def test_the_queue_shows_my_teams_escalations(alice, escalation):
    response = logged_in(alice).get(reverse("review:queue"))
    assert response.status_code == 200
    assert f'id="esc-{escalation.pk}"' in response.text
    assert 'ws-connect="/ws/review/"' in response.text


def test_the_queue_hides_other_teams_escalations(bob, escalation):
    response = logged_in(bob).get(reverse("review:queue"))
    assert f'id="esc-{escalation.pk}"' not in response.text


def test_admins_see_every_team(admin_user, escalation):
    response = logged_in(admin_user).get(reverse("review:queue"))
    assert f'id="esc-{escalation.pk}"' in response.text


def test_the_queue_is_sorted_by_sla_due_time_else_by_the_time_its_risk_allows(
    alice, agent, policies
):
    # A medium-risk reply without an SLA is due an hour after it was raised.
    none = escalate(agent, subject="no SLA")
    assert none.risk == "medium"
    late = escalate(agent, subject="late", due_in=timedelta(hours=3))
    overdue = escalate(agent, subject="overdue", due_in=timedelta(minutes=-5))
    soon = escalate(agent, subject="soon", due_in=timedelta(minutes=5))
    html = logged_in(alice).get(reverse("review:queue")).text
    assert queue_rows(html) == [str(e.pk) for e in (overdue, soon, none, late)]


def test_an_escalation_without_an_sla_is_never_buried_under_newer_ones(alice, agent, policies):
    old = escalate(agent, subject="routing, raised hours ago", action_type="route_to_team")
    Escalation.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(hours=3),
        due_without_sla_at=timezone.now() - timedelta(hours=1),
    )
    newer = [
        escalate(agent, subject=f"reply {i}", due_in=timedelta(minutes=30 + i)) for i in range(60)
    ]
    html = logged_in(alice).get(reverse("review:queue")).text
    rows = queue_rows(html)
    assert rows[0] == str(old.pk)
    assert str(newer[-1].pk) not in rows  # page two: the queue is longer than a page


def test_filters_narrow_the_list_and_counts_show_every_value(alice, carol, agent, policies):
    reply = escalate(agent, subject="reply", action_type="send_reply")
    crm = escalate(agent, subject="crm", action_type="update_crm")
    route = escalate(agent, subject="route", action_type="route_to_team")
    claim_escalation(escalation_id=route.pk, user=alice)
    claim_escalation(escalation_id=crm.pk, user=carol)
    client = logged_in(alice)
    url = reverse("review:queue")

    assert queue_rows(client.get(url, {"action_type": "update_crm"}).text) == [str(crm.pk)]
    # Graded from the policy inputs: the reply is irreversible and customer-facing but above
    # its bar; the routing is internal but far under its bar; the CRM update a little under.
    assert {e.pk: Escalation.objects.get(pk=e.pk).risk for e in (reply, crm, route)} == {
        reply.pk: "medium",
        crm.pk: "low",
        route.pk: "medium",
    }
    assert set(queue_rows(client.get(url, {"risk": "medium"}).text)) == {
        str(reply.pk),
        str(route.pk),
    }
    assert queue_rows(client.get(url, {"risk": "low"}).text) == [str(crm.pk)]
    assert queue_rows(client.get(url, {"risk": "high"}).text) == []
    assert queue_rows(client.get(url, {"mine": "1"}).text) == [str(route.pk)]
    assert queue_rows(client.get(url, {"status": "open"}).text) == [str(reply.pk)]
    assert queue_rows(client.get(url, {"team": "support", "agent": "triage-agent"}).text)
    assert queue_rows(client.get(url, {"workflow": "nope"}).text) == []

    html = client.get(url, {"action_type": "update_crm"}).text
    assert re.search(r'id="queue-count"[^>]*>1<', html)
    assert "of 3" in html
    # Facet counts are over the whole queue, not narrowed by the other filters.
    send_reply = re.search(r'data-value="send_reply"[^>]*>.*?class="n">(\d+)<', html, re.S)
    assert send_reply and send_reply.group(1) == "1"
    mine = re.search(r'Claimed by me</span><span class="n">(\d+)<', html)
    assert mine and mine.group(1) == "1"


def test_unknown_filter_values_filter_nothing_instead_of_failing(alice, escalation):
    response = logged_in(alice).get(
        reverse("review:queue"), {"risk": "x' OR 1=1", "status": "nope"}
    )
    assert response.status_code == 200
    assert queue_rows(response.text) == [str(escalation.pk)]


def test_an_htmx_filter_click_gets_just_the_queue_section(alice, escalation):
    response = logged_in(alice).get(
        reverse("review:queue"), {"risk": "high"}, headers={"HX-Request": "true"}
    )
    assert response.text.lstrip().startswith('<section id="queue"')
    assert 'ws-connect="/ws/review/?risk=high"' in response.text
    assert "HX-Request" in response["Vary"]


def test_the_queue_costs_the_same_number_of_queries_however_long_it_is(
    alice, agent, policies, django_assert_num_queries
):
    client = logged_in(alice)
    url = reverse("review:queue")
    for i in range(3):
        escalate(agent, subject=f"ticket {i}", due_in=timedelta(minutes=i))
    client.get(url)  # warm the session
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for i in range(3, 40):
        escalate(agent, subject=f"ticket {i}", action_type=("update_crm", "send_reply")[i % 2])
    # session, user, the user's teams, the rows (one join), every count (one query)
    with django_assert_num_queries(5):
        response = client.get(url)
    assert len(queue_rows(response.text)) == 40
    assert len(few.captured_queries) == 5


def test_another_teams_escalation_is_a_404_for_every_verb(bob, escalation):
    client = logged_in(bob)
    assert client.get(reverse("review:detail", args=[escalation.pk])).status_code == 404
    for name, data in (
        ("review:decide", {"verdict": "approve"}),
        ("review:claim", {}),
        ("review:release", {}),
        ("review:reassign", {"team": escalation.team_id}),
    ):
        assert client.post(reverse(name, args=[escalation.pk]), data).status_code == 404
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN and escalation.claimed_by is None
    assert not Decision.objects.exists()


def test_another_teams_run_is_a_404(bob, escalation):
    response = logged_in(bob).get(reverse("runs:detail", args=[escalation.action.run_id]))
    assert response.status_code == 404


def test_agent_text_is_escaped_everywhere_it_is_shown(alice, escalation):
    client = logged_in(alice)
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


def test_pages_carry_a_csp_without_inline_script_or_style(alice, escalation):
    client = logged_in(alice)
    for url in (reverse("review:queue"), reverse("review:detail", args=[escalation.pk])):
        response = client.get(url)
        csp = response["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in response.text and "style=" not in response.text


def test_every_post_needs_a_csrf_token(alice, escalation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    for name, data in (
        ("review:decide", {"verdict": "approve"}),
        ("review:claim", {}),
        ("review:reassign", {"team": escalation.team_id}),
    ):
        assert client.post(reverse(name, args=[escalation.pk]), data).status_code == 403
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN and escalation.claimed_by is None
    assert not Decision.objects.exists()


def test_htmx_posts_carry_the_token_from_the_page(alice, escalation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get(reverse("review:detail", args=[escalation.pk])).text
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page)
    assert token
    response = client.post(
        reverse("review:claim", args=[escalation.pk]),
        headers={"X-CSRFToken": token.group(1), "HX-Request": "true"},
    )
    assert response.status_code == 200
    assert 'id="live-state"' in response.text and "You</strong> claimed this" in response.text
    escalation.refresh_from_db()
    assert escalation.claimed_by == alice


def test_the_detail_page_leads_with_why_and_what_is_at_stake(alice, escalation):
    html = logged_in(alice).get(reverse("review:detail", args=[escalation.pk])).text
    assert "Why it was escalated" in html and "irreversible" in html.lower()
    assert "Customer-facing" in html and "medium risk" in html
    assert "Plan" in html and "State" in html
    assert f'ws-connect="/ws/review/?watch={escalation.pk}"' in html
    assert "<kbd>e</kbd> edit then approve" in html


def test_approving_an_irreversible_reply_asks_once_more_and_only_then_decides(alice, escalation):
    client = logged_in(alice)
    url = reverse("review:decide", args=[escalation.pk])
    first = client.post(url, {"verdict": "approve"})
    assert first.status_code == 200 and "cannot be undone" in first.text
    assert "sent to <strong>ada@example.com</strong>" in first.text
    assert not Decision.objects.exists()
    # A confirmation is for the version it showed: a stale or forged one asks again.
    again = client.post(url, {"verdict": "approve", "confirm": "0123456789abcdef"})
    assert again.status_code == 200 and not Decision.objects.exists()
    response = _confirmed(client, url, {"verdict": "approve"})
    assert response.status_code == 302 and response["Location"] == reverse("review:queue")
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.APPROVED
    assert Decision.objects.get().via == "web"


def test_edit_then_approve_executes_the_edited_fields_and_records_the_diff(alice, escalation):
    client = logged_in(alice)
    url = reverse("review:decide", args=[escalation.pk])
    edit = {
        "verdict": "edit",
        "p__ticket_id": "T-1",
        "p__to": "ada@example.com",
        "p__body": "Hello Ada, refunded.",
    }
    shown = client.post(url, edit)
    # The confirm step shows what changed before anything irreversible runs.
    assert "<del>Hello Ada</del> → <ins>Hello Ada, refunded.</ins>" in shown.text
    assert not Decision.objects.exists()
    response = _confirmed(
        client,
        url,
        {
            "verdict": "edit",
            "p__ticket_id": "T-1",
            "p__to": "ada@example.com",
            "p__body": "Hello Ada, refunded.",
        },
    )
    assert response.status_code == 302
    action = Action.objects.get(pk=escalation.action_id)
    assert action.payload_to_execute["body"] == "Hello Ada, refunded."
    assert action.payload["body"] == "Hello Ada"
    human = TraceEvent.objects.filter(run=action.run, kind="human").last()
    assert human.data["payload_diff"]["changed"] == {"body": ["Hello Ada", "Hello Ada, refunded."]}
    html = logged_in(alice).get(reverse("review:detail", args=[escalation.pk])).text
    assert "Edited before approval" in html and "Hello Ada, refunded." in html


def test_an_edit_that_changes_nothing_is_a_plain_approval(alice, escalation):
    _confirmed(
        logged_in(alice),
        reverse("review:decide", args=[escalation.pk]),
        {
            "verdict": "edit",
            "p__ticket_id": "T-1",
            "p__to": "ada@example.com",
            "p__body": "Hello Ada",
        },
    )
    decision = Decision.objects.get()
    assert decision.verdict == Verdict.APPROVE and decision.edited_payload is None


def test_an_edit_emptying_a_required_field_is_refused_and_changes_nothing(alice, escalation):
    response = logged_in(alice).post(
        reverse("review:decide", args=[escalation.pk]),
        {"verdict": "edit", "p__ticket_id": "T-1", "p__to": "ada@example.com", "p__body": "  "},
    )
    assert response.status_code == 400
    assert "body cannot be empty" in response.text
    assert not Decision.objects.exists()


def test_numbers_stay_numbers_and_bad_ones_are_refused(alice, agent, policies):
    esc = escalate(agent, action_type="update_crm")
    from workflows.models import Action as A

    A.objects.filter(pk=esc.action_id).update(
        payload={"ticket_id": "T-1", "priority": 2, "vip": False}
    )
    client = logged_in(alice)
    bad = client.post(
        reverse("review:decide", args=[esc.pk]),
        {"verdict": "edit", "p__ticket_id": "T-1", "p__priority": "two"},
    )
    assert bad.status_code == 400 and "Enter a whole number" in bad.text
    client.post(
        reverse("review:decide", args=[esc.pk]),
        {"verdict": "edit", "p__ticket_id": "T-1", "p__priority": "3", "p__vip": "on"},
    )
    assert A.objects.get(pk=esc.action_id).payload_to_execute == {
        "ticket_id": "T-1",
        "priority": 3,
        "vip": True,
    }


def test_a_nested_payload_is_edited_as_json_and_bad_json_is_refused(alice, agent, policies):
    esc = escalate(agent, action_type="update_crm")
    from workflows.models import Action as A

    A.objects.filter(pk=esc.action_id).update(payload={"ticket_id": "T-1", "tags": ["a"]})
    client = logged_in(alice)
    response = client.post(
        reverse("review:decide", args=[esc.pk]), {"verdict": "edit", "edited_payload": "{not json"}
    )
    assert response.status_code == 400 and "Not valid JSON" in response.text
    response = client.post(
        reverse("review:decide", args=[esc.pk]),
        {"verdict": "edit", "edited_payload": '{"tags": []}'},
    )
    assert response.status_code == 400 and "missing: ticket_id" in response.text
    assert not Decision.objects.exists()
    client.post(
        reverse("review:decide", args=[esc.pk]),
        {"verdict": "edit", "edited_payload": '{"ticket_id": "T-1", "tags": ["a", "b"]}'},
    )
    assert A.objects.get(pk=esc.action_id).payload_to_execute["tags"] == ["a", "b"]


def test_rejecting_without_a_reason_is_refused_and_changes_nothing(alice, escalation):
    response = logged_in(alice).post(
        reverse("review:decide", args=[escalation.pk]), {"verdict": "reject", "reason": ""}
    )
    assert response.status_code == 400
    assert "Say why you reject it" in response.text
    assert not Decision.objects.exists()


def test_responding_sends_free_text_instead_of_running_the_action(alice, escalation):
    client = logged_in(alice)
    response = client.post(reverse("review:decide", args=[escalation.pk]), {"verdict": "respond"})
    assert response.status_code == 400 and "Write the answer" in response.text
    client.post(
        reverse("review:decide", args=[escalation.pk]),
        {"verdict": "respond", "reason": "Offer a refund, not a coupon."},
    )
    decision = Decision.objects.get()
    assert decision.verdict == Verdict.RESPOND and decision.reason.startswith("Offer a refund")
    assert Action.objects.get(pk=escalation.action_id).status == "rejected"


def test_the_second_tab_sees_who_decided_instead_of_an_error(alice, carol, escalation):
    decide_escalation(
        escalation_id=escalation.pk, user=carol, verdict=Verdict.APPROVE, via=Via.SLACK
    )
    response = logged_in(alice).post(
        reverse("review:decide", args=[escalation.pk]),
        {"verdict": "reject", "reason": "no"},
        follow=True,
    )
    assert response.status_code == 200
    assert "already approved by carol via slack" in response.text
    assert "Decided" in response.text and "via Slack" in response.text
    assert 'id="decision-form"' not in response.text
    assert Decision.objects.count() == 1


def test_claiming_and_releasing_from_the_detail_page(alice, carol, escalation):
    client = logged_in(alice)
    response = client.post(reverse("review:claim", args=[escalation.pk]), follow=True)
    assert "You</strong> claimed this" in response.text
    carol_page = logged_in(carol).post(reverse("review:claim", args=[escalation.pk]), follow=True)
    assert "already claimed by alice" in carol_page.text
    assert "alice</strong> is on this" in carol_page.text
    client.post(reverse("review:release", args=[escalation.pk]))
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN and escalation.claimed_by is None


def test_reassigning_hands_it_to_the_other_team(alice, bob, billing, escalation):
    client = logged_in(alice)
    response = client.post(
        reverse("review:reassign", args=[escalation.pk]), {"team": billing.pk, "note": "refund"}
    )
    assert response.status_code == 302
    escalation.refresh_from_db()
    assert escalation.team == billing
    assert client.get(reverse("review:detail", args=[escalation.pk])).status_code == 404
    assert logged_in(bob).get(reverse("review:detail", args=[escalation.pk])).status_code == 200


def test_reassigning_to_no_team_is_refused(alice, escalation):
    response = logged_in(alice).post(reverse("review:reassign", args=[escalation.pk]), {"team": ""})
    assert response.status_code == 400
    escalation.refresh_from_db()
    assert escalation.team.slug == "support"


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


def test_every_open_escalation_is_reachable_page_by_page(alice, agent, policies, monkeypatch):
    from review import queue

    monkeypatch.setattr(queue, "PAGE_SIZE", 3)
    made = [escalate(agent, subject=f"t{i}", due_in=timedelta(minutes=i % 4)) for i in range(7)]
    made.append(escalate(agent, subject="no SLA"))
    client = logged_in(alice)
    url, seen, pages = reverse("review:queue"), [], 0
    query: str | None = ""
    while query is not None:
        html = client.get(f"{url}?{query}").text
        rows = queue_rows(html)
        assert len(rows) <= 3
        seen += rows
        pages += 1
        more = re.search(r'href="\?([^"]*after=[^"]*)"[^>]*>Next 3', html)
        query = more.group(1).replace("&amp;", "&") if more else None
    for e in made:
        e.refresh_from_db()
    expected = sorted(
        made, key=lambda e: (e.sla_due_at or e.due_without_sla_at, e.created_at, e.pk)
    )
    assert seen == [str(e.pk) for e in expected]
    assert pages == 3
    assert "Due soonest" in html  # the way back to the first page


def test_a_page_starting_after_a_decided_row_still_starts_where_it_did(
    alice, carol, agent, policies, monkeypatch
):
    from review import queue

    monkeypatch.setattr(queue, "PAGE_SIZE", 2)
    _first, second, third = (
        escalate(agent, subject=f"t{i}", due_in=timedelta(minutes=i + 1)) for i in range(3)
    )
    decide_escalation(escalation_id=second.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    html = logged_in(alice).get(reverse("review:queue"), {"after": str(second.pk)}).text
    assert queue_rows(html) == [str(third.pk)]


def test_counts_past_the_cap_say_so_instead_of_counting_everything(
    alice, agent, policies, monkeypatch
):
    from review import queue

    monkeypatch.setattr(queue, "COUNT_CAP", 3)
    monkeypatch.setattr(queue, "FACET_SAMPLE", 2)
    for i in range(5):
        escalate(
            agent,
            subject=f"t{i}",
            action_type=("update_crm", "send_reply")[i % 2],
            due_in=timedelta(minutes=i),
        )
    client = logged_in(alice)
    html = client.get(reverse("review:queue")).text
    assert re.search(r'id="queue-count"[^>]*>3\+<', html)
    assert "the counts below are over the 2 due soonest" in html
    # The two due soonest: one CRM update, one reply.
    for action_type in ("update_crm", "send_reply"):
        n = re.search(rf'data-value="{action_type}"[^>]*>.*?class="n">(\d+)<', html, re.S)
        assert n and n.group(1) == "1"
    narrowed = client.get(reverse("review:queue"), {"action_type": "update_crm"}).text
    assert re.search(r'id="queue-count"[^>]*>3<', narrowed) and "of 3+" in narrowed


def test_the_page_reads_in_an_index_range_however_long_the_queue(alice, agent, policies):
    """The first page's query is served by the partial queue index, not a sort of the queue."""
    from review.queue import QueueFilters, _values, _windows, undecided_for

    escalate(agent, subject="one", due_in=timedelta(minutes=5))
    qs = _values(_windows(undecided_for(alice), QueueFilters(), alice, None)[0])[:51]
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        sql, params = qs.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert "esc_undecided" in plan and "Sort" not in plan.split("esc_undecided")[0]


def test_an_edited_reply_shows_the_lines_that_changed_not_the_whole_body_struck_out(
    alice, agent, policies
):
    """Judged in seconds: a reviewer who added one sentence to a four-paragraph reply sees
    that sentence added, before confirming and on the decided page, not the whole old body
    struck out beside the whole new one (where the change hides)."""
    body = "Hi Ada,\n\nWe are looking into the charge.\n\nBest regards,\nSupport"
    payload = {"ticket_id": "T-1", "to": "ada@example.com", "body": body}
    esc = escalate(agent, payload=payload)
    client = logged_in(alice)
    url = reverse("review:decide", args=[esc.pk])
    edited = body.replace("charge.", "charge.\n\nThe duplicate was refunded today.")
    data = {"verdict": "edit", "p__ticket_id": "T-1", "p__to": "ada@example.com"}
    shown = client.post(url, {**data, "p__body": edited}).text
    confirm = shown[shown.index('id="confirm-step"') :]
    confirm = confirm[: confirm.index("</ul>")]
    assert "<ins>The duplicate was refunded today.</ins>" in confirm
    assert "<del>" not in confirm and "Best regards" not in confirm
    _confirmed(client, url, {**data, "p__body": edited})
    html = client.get(reverse("review:detail", args=[esc.pk])).text
    decided = html[html.index("Edited before approval") :]
    decided = decided[: decided.index("</ul>")]
    assert "<ins>The duplicate was refunded today.</ins>" in decided
    assert "<del>" not in decided and "Best regards" not in decided
