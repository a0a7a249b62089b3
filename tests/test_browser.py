"""End to end in headless Chromium: reviewers work the live queue while a worker runs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect

from bench import processes
from escalations.actions import decide_escalation
from escalations.models import Escalation, Verdict, Via
from tests.conftest import (
    ARTIFACTS,
    _free_port,
    _service_env,
    _stop,
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
def test_edit_then_approve_executes_the_edited_reply(page, celery_worker, alice, policies, ticket):
    run = start_run(workflow="support_triage", input=ticket)
    esc = _reply_escalation(run)
    wait_for_run(run, RunStatus.WAITING)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    page.keyboard.press("e")
    # "e" opens the editor with its first field focused (the field order follows the
    # stored payload, which PostgreSQL's jsonb orders by key length, so which one varies).
    expect(page.locator("#edit-panel")).to_have_attribute("open", "")
    expect(page.locator("#edit-panel :focus")).to_have_count(1)
    body = page.locator("#id_p__body")
    body.fill("Hello Ada, we refunded the duplicate charge.")
    _shot(page, "detail-editing", full_page=True)
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect(page.locator(".messages")).to_contain_text("Approved with your edits")
    wait_for_run(run, RunStatus.SUCCEEDED)
    action = Action.objects.get(pk=esc.action_id)
    assert action.status == ActionStatus.EXECUTED
    assert action.payload_to_execute["body"] == "Hello Ada, we refunded the duplicate charge."
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator(".diff")).to_contain_text("we refunded the duplicate charge")


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
    run = wait_for_run(run, RunStatus.SUCCEEDED)
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


@pytest.fixture
def restartable_server(django_db_setup, django_db_blocker, worker_log_dir) -> Iterator[dict]:
    """A daphne of this test's own, which the test may stop and start again on the same port."""
    with django_db_blocker.unblock():
        env = _service_env()
    port = _free_port()
    server: dict = {"url": f"http://127.0.0.1:{port}"}

    def start() -> None:
        server["proc"] = processes.start_daphne(
            env=env, log_path=worker_log_dir / "daphne-restartable.log", port=port, append=True
        )

    server["start"] = start
    server["stop"] = lambda: _stop(server["proc"])
    start()
    yield server
    _stop(server["proc"])


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
