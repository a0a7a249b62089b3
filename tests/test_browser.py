"""End to end in headless Chromium: reviewers work the live queue while a worker runs."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect

from escalations.actions import decide_escalation
from escalations.models import Decision, Escalation, Verdict, Via
from tests.conftest import (
    ARTIFACTS,
    login,
    wait_for,
    wait_for_run,
)
from tests.review.factories import escalate
from workflows.actions import start_run
from workflows.models import Action, ActionStatus, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def _shot(page: Page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _open_as(browser: Browser, base_url: str, username: str) -> Page:
    page = browser.new_context(
        base_url=base_url, viewport={"width": 1366, "height": 860}
    ).new_page()
    login(page, username)
    return page


def _reply_escalation(run) -> Escalation:
    return wait_for(
        lambda: Escalation.objects.filter(action__run=run, action__action_type="send_reply").first()
    )


@pytest.mark.worker
def test_an_escalation_appears_live_and_approving_it_finishes_the_run(
    page, celery_worker, alice, policies, ticket
):
    login(page, "alice")
    expect(page.locator("h1")).to_contain_text("Review queue")
    expect(page.locator("#queue-count")).to_have_text("0")
    expect(page.locator(".empty")).to_be_visible()

    run = start_run(workflow="support_triage", input=ticket)
    reply = page.locator("#queue-rows .row", has_text="send_reply")
    expect(reply).to_be_visible(timeout=15_000)
    expect(page.locator("#queue-count")).to_have_text("1")
    _shot(page, "queue")

    reply.locator("a").click()
    expect(page.locator(".lede")).to_contain_text("send reply to customer")
    expect(page.locator(".reasons")).to_contain_text("irreversible")
    _shot(page, "detail", full_page=True)
    page.click("button.approve[value=approve]")
    # Irreversible: one more look before it is sent.
    expect(page.locator("#confirm-step")).to_contain_text("cannot be undone")
    page.click("[data-confirm-approve]")

    expect(page.locator(".messages")).to_contain_text("Approved")
    expect(page.locator("#queue-rows .row")).to_have_count(0)
    wait_for_run(run, RunStatus.SUCCEEDED)
    assert Action.objects.get(run=run, action_type="send_reply").status == ActionStatus.EXECUTED


def test_rows_arrive_live_in_sla_order_without_moving_the_others(page, alice, agent, policies):
    escalate(agent, subject="Due in an hour", due_in=timedelta(hours=1))
    escalate(agent, subject="Due in ten minutes", due_in=timedelta(minutes=10))
    page.add_init_script(
        "document.addEventListener('htmx:wsAfterMessage', () => {"
        " window.wsMessages = (window.wsMessages || 0) + 1; });"
    )
    login(page, "alice")
    titles = page.locator("#queue-rows .row .title")
    expect(titles).to_have_text(["Due in ten minutes", "Due in an hour"])
    # The socket's snapshot swaps the rows in again: measure after it, not during it (a row
    # detached mid-swap has no box; on a busy machine the snapshot can land that late).
    page.wait_for_function("() => window.wsMessages > 0")
    first_box = page.locator("#queue-rows .row").first.bounding_box()
    assert first_box is not None

    escalate(agent, subject="Due in half an hour", due_in=timedelta(minutes=30))
    expect(titles).to_have_text(["Due in ten minutes", "Due in half an hour", "Due in an hour"])
    # Nothing above the new row moved.
    assert page.locator("#queue-rows .row").first.bounding_box() == first_box
    expect(page.locator("#queue-count")).to_have_text("3")
    expect(page.locator(".row .sla").first).to_have_text(re.compile(r"due in \d+m"))
    _shot(page, "queue-sorted")


def test_claiming_shows_on_every_open_page(browser, live_server_url, alice, carol, agent, policies):
    esc = escalate(agent, subject="Refund for order 1042")
    alice_page = _open_as(browser, live_server_url, "alice")
    carol_page = _open_as(browser, live_server_url, "carol")
    alice_page.locator("#queue-rows .row a").first.click()
    alice_page.click("#live-state button:has-text('Claim')")
    expect(alice_page.locator("#live-state")).to_contain_text("You claimed this")
    row = carol_page.locator(f"#esc-{esc.pk}")
    expect(row).to_contain_text("claimed by alice")
    expect(row).to_have_class(re.compile(r"row-claimed"))
    carol_page.locator(f"#esc-{esc.pk} a").click()
    expect(carol_page.locator("#live-state")).to_contain_text("alice is on this")
    _shot(carol_page, "detail-claimed-by-someone-else")
    for p in (alice_page, carol_page):
        p.context.close()


@pytest.mark.worker
def test_a_reply_is_an_email_edited_in_its_body_then_approved_after_seeing_the_diff(
    page, celery_worker, alice, policies, ticket
):
    run = start_run(workflow="support_triage", input=ticket)
    esc = _reply_escalation(run)
    wait_for_run(run, RunStatus.WAITING)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    # The reply as an email, beside the customer's message, above the fold.
    judge = page.locator(".judge")
    expect(judge.locator(".customer-message")).to_contain_text("I was charged twice this month.")
    expect(judge.locator(".email-to")).to_have_text(ticket["customer"])
    expect(judge.locator(".email-subject")).to_contain_text("Re: Charged twice")
    body_box = judge.locator(".proposal .email-body").bounding_box()
    assert body_box is not None and body_box["y"] < 860
    assert "\\n" not in judge.locator(".proposal .email-body").inner_text()
    page.keyboard.press("e")
    # "e" puts the cursor in the body, the wide editor.
    body = page.locator("#id_p__body")
    expect(body).to_be_focused()
    body.fill("Hello Ada,\n\nwe refunded the duplicate charge.")
    _shot(page, "detail-editing", full_page=True)
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    # Irreversible: the diff, and a confirm button that a key alone never presses.
    confirm = page.locator("#confirm-step")
    expect(confirm).to_contain_text("cannot be undone")
    # Line by line: each added line is its own <ins>, the one that matters among them.
    expect(
        confirm.locator(".diff ins", has_text="we refunded the duplicate charge")
    ).to_be_visible()
    _shot(page, "detail-confirm", full_page=True)
    page.keyboard.press("a")
    expect(page.locator("[data-confirm-approve]")).to_be_focused()
    assert not Action.objects.get(pk=esc.action_id).approved_payload
    page.keyboard.press("Enter")
    expect(page.locator(".messages")).to_contain_text("Approved with your edits")
    wait_for_run(run, RunStatus.SUCCEEDED)
    action = Action.objects.get(pk=esc.action_id)
    assert action.status == ActionStatus.EXECUTED
    assert action.payload_to_execute["body"] == "Hello Ada,\n\nwe refunded the duplicate charge."
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator(".diff")).to_contain_text("we refunded the duplicate charge")


def test_search_narrows_the_queue_and_keeps_the_filters(page, alice, agent, policies):
    crushed = escalate(agent, subject="Package arrived damaged", body="The box was crushed.")
    escalate(agent, subject="Login fails", body="My account is locked.")
    login(page, "alice")
    expect(page.locator("#queue-rows .row")).to_have_count(2)
    page.keyboard.press("/")
    expect(page.locator("#queue-search")).to_be_focused()
    page.keyboard.type("crushed box")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"q=crushed"))
    expect(page.locator("#queue-rows .row")).to_have_count(1)
    expect(page.locator(f"#esc-{crushed.pk}")).to_be_visible()
    expect(page.locator("#queue-count")).to_have_text("1")
    # Live: a new matching escalation arrives on the searched page; others do not.
    escalate(agent, subject="Another crushed box", body="crushed again")
    escalate(agent, subject="Unrelated", body="nothing to see")
    expect(page.locator("#queue-rows .row")).to_have_count(2)
    _shot(page, "queue-search")


def test_bulk_approve_of_twenty_rows_decides_each_exactly_once(page, alice, agent, policies):
    made = [
        escalate(
            agent,
            subject=f"Bulk {i}",
            action_type="send_reply" if i % 4 == 0 else "update_crm",
            due_in=timedelta(minutes=10 + i),
        )
        for i in range(20)
    ]
    login(page, "alice")
    expect(page.locator("#queue-rows .row")).to_have_count(20)
    page.check("#pick-all")
    expect(page.locator("#bulk-count")).to_have_text("20 selected")
    page.fill("#bulk-reason", "checked the batch")
    page.click("#bulk-form button[value=approve]")
    # Five of them send email: shown as they will run, and confirmed once for all.
    expect(page.locator("h1")).to_contain_text("5 cannot be undone")
    expect(page.locator(".bulk-confirm .email-body")).to_have_count(5)
    _shot(page, "bulk-confirm", full_page=True)
    page.click("[data-confirm-approve]")
    expect(page.locator(".messages")).to_contain_text("Approved 20")
    expect(page.locator("#queue-rows .row")).to_have_count(0)
    decisions = Decision.objects.filter(escalation__in=made)
    assert decisions.count() == 20
    assert set(decisions.values_list("verdict", "via", "reason").distinct()) == {
        ("approve", "web", "checked the batch")
    }
    assert len({d.escalation_id for d in decisions}) == 20
    # Back and submit the confirm page again: nothing is decided twice.
    page.go_back()
    page.click("[data-confirm-approve]")
    expect(page.locator(".messages")).to_contain_text("20 already decided")
    assert Decision.objects.filter(escalation__in=made).count() == 20


def test_claiming_from_the_queue_with_c_shows_on_the_row_without_errors(
    page, alice, agent, policies
):
    esc = escalate(agent, subject="Claim me from the queue")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.add_init_script(
        "document.addEventListener('htmx:oobErrorNoTarget', e => console.error('oob', e.detail));"
    )
    login(page, "alice")
    expect(page.locator(f"#esc-{esc.pk}")).to_contain_text("unclaimed")
    page.keyboard.press("j")
    page.keyboard.press("c")
    expect(page.locator(f"#esc-{esc.pk}")).to_contain_text("claimed by you")
    expect(page.locator("#queue-note")).to_have_text("Claimed.")
    assert errors == []


@pytest.mark.worker
def test_a_rejection_reason_reaches_the_agent(page, celery_worker, alice, policies, ticket):
    run = start_run(workflow="support_triage", input=ticket)
    esc = _reply_escalation(run)
    wait_for_run(run, RunStatus.WAITING)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    page.keyboard.press("r")  # no reason yet: it asks for one instead of submitting
    expect(page.locator("#id_reason")).to_be_focused()
    page.locator("#id_reason").fill("Too casual: apologise and confirm the refund date.")
    page.keyboard.press("Escape")
    page.keyboard.press("r")
    expect(page.locator(".messages")).to_contain_text("Rejected")
    run = wait_for_run(run, RunStatus.HANDED_OFF)  # a rejected reply: a person owns the ticket
    feedback = run.state["workspace"]["outputs"]["act"]["feedback"]
    assert feedback == [
        {
            "action_type": "send_reply",
            "verdict": "reject",
            "reason": "Too casual: apologise and confirm the refund date.",
        }
    ]
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator(".trace")).to_contain_text(
        "reviewer rejected send_reply: “Too casual: apologise and confirm the refund date.”"
    )
    expect(page.locator("#live-state")).to_contain_text("Rejected by alice via Web")


def test_the_keyboard_flow(page, alice, agent, policies):
    first = escalate(agent, subject="First due", due_in=timedelta(minutes=5))
    escalate(agent, subject="Second due", due_in=timedelta(minutes=50))
    login(page, "alice")
    expect(page.locator(".keys")).to_contain_text("j/k move")
    rows = page.locator("#queue-rows .row")
    page.keyboard.press("j")
    expect(rows.nth(0)).to_have_class(re.compile("selected"))
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class(re.compile("selected"))
    page.keyboard.press("k")
    expect(rows.nth(0)).to_have_class(re.compile("selected"))
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/review/{first.pk}/")
    expect(page.locator(".crumbs .keys")).to_contain_text("a approve")
    page.keyboard.press("c")
    expect(page.locator("#live-state")).to_contain_text("You claimed this")
    page.keyboard.press("a")
    # An irreversible reply: "a" asks, and only a deliberate Enter on the button sends it.
    expect(page.locator("#confirm-step")).to_be_visible()
    page.keyboard.press("a")
    expect(page.locator("[data-confirm-approve]")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".messages")).to_contain_text("Approved")
    expect(rows).to_have_count(1)
    # Back in the queue the cursor is where it was, on what is now first.
    expect(rows.nth(0)).to_have_class(re.compile("selected"))
    page.keyboard.press("m")
    expect(page.locator(".facet-mine")).to_have_class(re.compile("on"))
    expect(page).to_have_url(re.compile(r"mine=1"))
    expect(page.locator(".empty")).to_be_visible()


def test_a_decision_made_in_slack_updates_every_open_page(
    browser, live_server_url, alice, carol, agent, policies
):
    esc = escalate(agent, subject="Decide me elsewhere")
    queue_page = _open_as(browser, live_server_url, "alice")
    detail_page = queue_page.context.new_page()
    detail_page.goto(f"/review/{esc.pk}/")
    expect(detail_page.locator("#decision-form")).to_be_visible()
    expect(queue_page.locator(f"#esc-{esc.pk}")).to_be_visible()
    time.sleep(0.5)  # both sockets subscribed (the snapshot would cover it anyway)

    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.SLACK)
    expect(queue_page.locator(f"#esc-{esc.pk}")).to_have_count(0)
    expect(queue_page.locator("#queue-count")).to_have_text("0")
    expect(detail_page.locator("#live-state")).to_contain_text("Approved by carol via Slack")
    expect(detail_page.locator("#decision-form")).to_be_hidden()
    expect(detail_page.locator("#esc-status")).to_have_text("Approved")
    _shot(detail_page, "detail-decided-in-slack")
    queue_page.context.close()


def test_the_page_resyncs_after_the_server_drops_the_socket(
    browser, restartable_server, alice, agent, policies
):
    page = _open_as(browser, restartable_server["url"], "alice")
    expect(page.locator(".conn-state")).to_be_visible()
    expect(page.locator("body")).not_to_have_class(re.compile("ws-down"))

    restartable_server["stop"]()
    expect(page.locator("body")).to_have_class(re.compile("ws-down"))
    _shot(page, "queue-reconnecting")
    # Raised while nobody could be told: only the snapshot on reconnect can bring it.
    missed = escalate(agent, subject="Raised while the server was down")
    restartable_server["start"]()

    expect(page.locator(f"#esc-{missed.pk}")).to_be_visible(timeout=20_000)
    expect(page.locator("body")).not_to_have_class(re.compile("ws-down"))
    expect(page.locator("#queue-count")).to_have_text("1")
    # And it is live again, not just re-synced once.
    later = escalate(agent, subject="Raised after the restart")
    expect(page.locator(f"#esc-{later.pk}")).to_be_visible()
    page.context.close()
