"""End to end in headless Chromium: a reviewer works the live queue while a worker runs."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import ARTIFACTS, login, wait_for_run
from workflows.actions import start_run
from workflows.models import Action, ActionStatus, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.worker]


def test_an_escalation_appears_live_and_approving_it_finishes_the_run(
    page, celery_worker, alice, policies, ticket
):
    login(page, "alice")
    expect(page.locator("h1")).to_contain_text("Review queue")
    expect(page.locator("#queue-count")).to_have_text("0")

    run = start_run(workflow="support_triage", input=ticket)
    reply = page.locator("#queue-rows .row", has_text="send_reply")
    expect(reply).to_be_visible(timeout=15_000)
    expect(page.locator("#queue-count")).to_have_text("1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "queue.png"))

    reply.locator("a").click()
    expect(page.locator(".lede")).to_contain_text("send reply to customer")
    expect(page.locator(".reasons")).to_contain_text("irreversible")
    page.screenshot(path=str(ARTIFACTS / "detail.png"), full_page=True)
    page.click("button.approve")

    expect(page.locator(".messages")).to_contain_text("Decision recorded")
    expect(page.locator("#queue-rows .row")).to_have_count(0)
    wait_for_run(run, RunStatus.SUCCEEDED)
    assert Action.objects.get(run=run, action_type="send_reply").status == ActionStatus.EXECUTED

    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator(".trace")).to_contain_text("alice approved send_reply via web")


def test_a_decision_elsewhere_removes_the_row_from_every_open_queue(
    browser, live_server_url, celery_worker, alice, carol, policies, ticket
):
    pages = []
    for name in ("alice", "carol"):
        ctx = browser.new_context(base_url=live_server_url)
        p = ctx.new_page()
        login(p, name)
        pages.append(p)
    run = start_run(workflow="support_triage", input=ticket)
    for p in pages:
        expect(p.locator("#queue-rows .row", has_text="send_reply")).to_be_visible(timeout=15_000)
    wait_for_run(run, RunStatus.WAITING)

    alice_page, carol_page = pages
    alice_page.locator("#queue-rows .row a").first.click()
    alice_page.fill("#id_reason", "Tone is wrong")
    alice_page.click("button.reject")
    expect(carol_page.locator("#queue-rows .row")).to_have_count(0, timeout=5_000)
    expect(carol_page.locator(".empty")).to_be_visible()
    wait_for_run(run, RunStatus.SUCCEEDED)
    for p in pages:
        p.context.close()
