"""What a reviewer working a shift ran into, in headless Chromium: the shortcut switch stays
after a live change, a run's page fits a phone, the phone's irreversible confirmation is
what is on screen, `z` undoes, and a watched decision's page says what became of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from escalations.actions import decide_escalation
from escalations.models import Decision, Verdict, Via
from tests.conftest import login
from tests.review.factories import escalate
from tests.review.test_desk_browser import PHONE, _page
from workflows.models import Action, ActionStatus, Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_shortcut_switch_stays_after_a_live_change(
    browser, live_server_url, alice, carol, agent, policies
):
    esc = escalate(agent, subject="Decided elsewhere", due_in=timedelta(minutes=20))
    page = _page(browser, live_server_url)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator("#key-hints .keys-toggle")).to_have_text("Turn shortcuts off")
    expect(page.locator(".conn-state, #live-state").first).to_be_visible()
    page.wait_for_timeout(300)  # the page's socket is open
    # Carol decides it while alice reads it: the panel and the hints are pushed live.
    decide_escalation(
        escalation_id=esc.pk,
        user=carol,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Wrong customer.",
    )
    expect(page.locator("#live-state")).to_contain_text("Rejected by carol")
    expect(page.locator("#key-hints")).not_to_contain_text("approve")
    # The way to turn shortcuts off is still beside them.
    expect(page.locator("#key-hints .keys-toggle")).to_have_text("Turn shortcuts off")
    page.context.close()


def test_a_run_page_fits_a_phone(browser, live_server_url, alice, agent, policies):
    esc = escalate(agent, subject="Where is my order?")
    run = esc.action.run
    Effect.objects.create(
        key=f"{run.pk}:propose_actions:send_reply", run=run, step_name="act", result={}
    )
    page = _page(browser, live_server_url, PHONE)
    login(page, "alice")
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#effects")).to_contain_text("propose_actions:send_reply")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.context.close()


def test_on_a_phone_the_irreversible_confirmation_is_what_the_reviewer_sees(
    browser, live_server_url, alice, agent, policies
):
    """Tapping Approve on a phone answers with "this cannot be undone": that step must be on
    screen, and no other Approve button may stand in for "Yes, approve it" unseen."""
    esc = escalate(agent, subject="Where is my order?", due_in=timedelta(minutes=20))
    page = _page(browser, live_server_url, PHONE)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    page.locator(".action-bar button", has_text="Approve").click()
    confirm = page.locator("#confirm-step")
    expect(confirm).to_contain_text("cannot be undone")
    expect(confirm.locator("[data-confirm-approve]")).to_be_in_viewport()
    expect(page.locator(".action-bar")).to_be_hidden()
    assert not Decision.objects.exists()
    confirm.locator("[data-confirm-approve]").click()
    expect(page.locator(".messages")).to_contain_text("Approved")
    assert Decision.objects.get().verdict == Verdict.APPROVE
    page.context.close()


def test_z_undoes_an_approval_in_its_window_from_the_keyboard(
    browser, live_server_url, alice, agent, policies
):
    """The approval went out on `a` + Enter; taking it back must be as quick: `z`."""
    esc = escalate(agent, subject="Sent too fast", due_in=timedelta(minutes=20))
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    # The undo window (the test settings make it 0 s): a minute left, and no worker to run it.
    Action.objects.filter(pk=esc.action_id).update(
        execute_after=timezone.now() + timedelta(minutes=1)
    )
    page = _page(browser, live_server_url)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator("#settlement button[data-undo]")).to_be_visible()
    expect(page.locator("#key-hints")).to_contain_text("z undo")
    page.keyboard.press("z")
    expect(page.locator("#decision-form")).to_be_visible()
    expect(page.locator(".messages")).to_contain_text("Undone: nothing was sent")
    esc.refresh_from_db()
    assert esc.is_undecided and not Decision.objects.filter(escalation=esc).exists()
    assert Action.objects.get(pk=esc.action_id).status == ActionStatus.ESCALATED
    page.context.close()


def test_a_page_watching_a_decision_says_what_became_of_it_once_it_settles(
    browser, live_server_url, alice, carol, agent, policies
):
    """Carol rejects the reply alice is reading: alice's page first says the ticket is about
    to be handed to a person, then — once the engine ran the fallback — who owns it, without
    a reload (it used to stay on "next: hand the ticket to a person" for good)."""
    esc = escalate(agent, subject="Watched while decided", due_in=timedelta(minutes=20))
    page = _page(browser, live_server_url)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    expect(page.locator("#decision-form")).to_be_visible()
    page.wait_for_timeout(300)  # the page's socket is open
    decide_escalation(
        escalation_id=esc.pk, user=carol, verdict=Verdict.REJECT, via=Via.WEB, reason="No."
    )
    expect(page.locator("#settlement")).to_contain_text("next: hand the ticket to a person")
    # What the engine's settle does when it runs the fallback (no worker in this test).
    run = esc.action.run
    Effect.objects.create(
        key=f"{run.pk}:act:fallback-{esc.action_id}",
        run=run,
        step_name="act",
        action_id=esc.action_id,
        result={"assigned_to": "carol"},
    )
    expect(page.locator("#settlement")).to_contain_text("carol owns it", timeout=10_000)
    expect(page.locator("#due-or-outcome")).to_contain_text("carol owns it")
    page.context.close()
