"""The desk in headless Chromium: a lost session ends on the login page, a phone-width screen
has no sideways scroll, no page logs a console error, shortcuts can be turned off and live
changes are read out."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect

from escalations.actions import claim_escalation
from escalations.models import AutonomyPolicy
from tests.conftest import ARTIFACTS, login
from tests.review.factories import escalate

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

PHONE: ViewportSize = {"width": 390, "height": 844}


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _page(browser: Browser, base_url: str, viewport: ViewportSize | None = None) -> Page:
    context = browser.new_context(
        base_url=base_url, viewport=viewport or {"width": 1280, "height": 860}
    )
    return context.new_page()


def _errors(page: Page) -> list[str]:
    """Every console error and uncaught exception the page logs from now on."""
    seen: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.append(f"{page.url}: console.error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.append(f"{page.url}: pageerror: {exc}"))
    return seen


def _scroll_width(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def test_a_lost_session_sends_the_live_queue_to_the_login_page(
    browser, restartable_server, alice, agent, policies
):
    escalate(agent, subject="Waiting for alice")
    page = _page(browser, restartable_server["url"])
    login(page, "alice")
    expect(page.locator(".conn-state")).to_have_text("live")

    # The session ends (expired, or flushed by a logout elsewhere) while the socket is down.
    restartable_server["stop"]()
    expect(page.locator(".conn-state")).to_have_text("reconnecting…")
    Session.objects.all().delete()
    restartable_server["start"]()

    page.wait_for_url(re.compile(r"/login/\?next=(/|%2F)review(/|%2F)"), timeout=30_000)
    expect(page.locator("input[name=username]")).to_be_visible()
    _shot(page, "session-lost-login")
    page.context.close()


def test_a_filter_click_after_the_session_ended_goes_to_the_login_page(
    page, alice, agent, policies
):
    escalate(agent, subject="Waiting for alice")
    login(page, "alice")
    expect(page.locator(".conn-state")).to_have_text("live")
    Session.objects.all().delete()
    page.locator(".facet a[data-facet=risk]").first.click()
    page.wait_for_url(re.compile(r"/login/\?next="))
    expect(page.locator("input[name=username]")).to_be_visible()
    assert page.locator("#queue").count() == 0  # not the login form swapped into the queue


def test_the_queue_and_the_detail_page_fit_a_phone(
    browser, live_server_url, alice, agent, policies
):
    long = "A subject long enough to push a row wider than any phone screen " * 3
    esc = escalate(agent, subject=long, due_in=timedelta(minutes=20))
    for i in range(3):
        escalate(agent, subject=f"Refund for order {1040 + i}", action_type="update_crm")
    page = _page(browser, live_server_url, PHONE)
    login(page, "alice")
    expect(page.locator(".conn-state")).to_have_text("live")
    expect(page.locator("#queue-rows .row")).to_have_count(4)
    assert _scroll_width(page) <= 390
    logout = page.locator("button", has_text="Log out")
    expect(logout).to_be_in_viewport()
    box = logout.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    # The filters wrap: every one of them inside the screen, none clipped at its edge.
    chips = page.locator(".facet a:visible")
    assert chips.count() >= 4
    for i in range(chips.count()):
        box = chips.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, i
    groups = page.locator("#queue-facets")
    assert groups.evaluate("e => e.scrollWidth <= e.clientWidth")
    _shot(page, "queue-390")

    page.goto(f"/review/{esc.pk}/")
    expect(page.locator("#decision-form")).to_be_visible()
    # The decision within reach: a bar on the first screen, and the panel right after the
    # proposal (before the summary, the facts and the evidence).
    bar = page.locator(".action-bar")
    expect(bar).to_be_in_viewport()
    box = bar.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 844
    panel_y = page.locator("#decision-panel").bounding_box()
    summary_y = page.locator(".card.summary").bounding_box()
    assert panel_y is not None and summary_y is not None and panel_y["y"] < summary_y["y"]
    page.locator(".action-bar a", has_text="Reject or respond").click()
    expect(page.locator("#id_reason")).to_be_in_viewport()
    expect(page.locator(".conn-state, #live-state").first).to_be_visible()
    assert _scroll_width(page) <= 390
    approve = page.locator('.decision-form button[data-key="a"]')
    approve.scroll_into_view_if_needed()
    box = approve.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    _shot(page, "detail-390")
    page.context.close()


def test_no_page_logs_a_console_error(browser, live_server_url, admin_user, carol, agent, policies):
    esc = escalate(agent, subject="Check every page", due_in=timedelta(minutes=20))
    other = escalate(agent, subject="Claimed from the queue", due_in=timedelta(minutes=30))
    taken = escalate(agent, subject="Carol's already", due_in=timedelta(minutes=40))
    claim_escalation(escalation_id=taken.pk, user=carol)
    run = esc.action.run
    policy = AutonomyPolicy.objects.get(name="replies")
    page = _page(browser, live_server_url)
    errors = _errors(page)
    login(page, "root")

    # The queue, live, with a claim from the keyboard (its answer swaps nothing there).
    expect(page.locator(".conn-state")).to_have_text("live")
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator(f"#esc-{other.pk}")).to_have_class(re.compile("selected"))
    page.keyboard.press("c")
    expect(page.locator(f"#esc-{other.pk}")).to_contain_text("claimed by you")
    page.keyboard.press("j")
    page.keyboard.press("c")  # carol has it: refused, and said so without an error
    expect(page.locator("#queue-note")).to_contain_text("Not claimed")
    # A filter click swaps the queue and opens a new socket.
    page.locator(".facet a[data-facet=risk]").first.click()
    expect(page).to_have_url(re.compile(r"risk="))
    expect(page.locator(".conn-state")).to_have_text("live")

    for url in (
        f"/review/{esc.pk}/",
        "/runs/",
        f"/runs/{run.pk}/",
        "/metrics/",
        "/metrics/?period=30",
        "/admin/",
        "/admin/escalations/autonomypolicy/",
        f"/admin/escalations/autonomypolicy/{policy.pk}/change/",
        "/admin/escalations/escalation/",
        "/admin/escalations/agentprofile/",
    ):
        page.goto(url)
        page.wait_for_load_state("networkidle")
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator("#live-state")).to_be_visible()
    page.keyboard.press("c")
    expect(page.locator("#live-state")).to_contain_text("You claimed this")
    assert errors == []
    page.context.close()


def test_shortcuts_can_be_turned_off_and_live_changes_are_read_out(
    browser, live_server_url, alice, agent, policies
):
    escalate(agent, subject="First", due_in=timedelta(minutes=5))
    page = _page(browser, live_server_url)
    login(page, "alice")
    expect(page.locator(".conn-state")).to_have_text("live")
    rows = page.locator("#queue-rows .row")

    toggle = page.locator(".keys .keys-toggle")
    expect(toggle).to_have_text("Turn shortcuts off")
    toggle.click()
    expect(toggle).to_have_text("Shortcuts are off: turn on")
    page.keyboard.press("j")
    expect(rows.first).not_to_have_class(re.compile("selected"))
    page.reload()  # the choice is kept
    expect(page.locator(".keys .keys-toggle")).to_have_text("Shortcuts are off: turn on")
    expect(page.locator(".conn-state")).to_have_text("live")
    page.keyboard.press("j")
    expect(rows.first).not_to_have_class(re.compile("selected"))
    page.locator(".keys .keys-toggle").click()
    page.keyboard.press("j")
    expect(rows.first).to_have_class(re.compile("selected"))

    announcer = page.locator("#live-announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")
    escalate(agent, subject="Arrived while watching", due_in=timedelta(minutes=9))
    expect(announcer).to_have_text("New escalation: Arrived while watching")
    page.context.close()
