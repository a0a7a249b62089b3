"""The undo window: an approved irreversible action waits before it runs, and an Undo inside
the window puts the escalation back in the queue with nothing sent. The engine runs in this
process (inline_tasks) and the clock is faked: nothing here waits on wall time."""

import time
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from escalations.actions import TooLateToUndo, decide_escalation, undo_approval
from escalations.models import Decision, EscalationStatus, Verdict, Via
from tests.conftest import login, wait_for
from workflows import engine
from workflows.actions import start_run
from workflows.models import Action, ActionStatus, Effect, RunStatus, TraceKind

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def waiting_reply(inline_tasks, policies, ticket):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    return Action.objects.get(run=run, action_type="send_reply")


def _later(seconds):
    return mock.patch(
        "django.utils.timezone.now", return_value=timezone.now() + timedelta(seconds=seconds)
    )


def test_an_approved_reply_waits_out_its_undo_window_before_it_is_sent(
    inline_tasks, waiting_reply, alice, settings
):
    settings.UNDO_WINDOW_SECONDS = 10
    decide_escalation(
        escalation_id=waiting_reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    waiting_reply.refresh_from_db()
    assert waiting_reply.execute_after is not None
    # The resume is sent for the window's end; advancing the run now sends nothing.
    [(due, task, _)] = inline_tasks.sent
    assert task == "workflows.tasks.resume_run"
    assert 9 < due - time.monotonic() <= 10.5
    inline_tasks.sent.clear()
    engine.advance_run(run_id=waiting_reply.run_id)
    assert not Effect.objects.filter(action=waiting_reply).exists()
    run = waiting_reply.run
    run.refresh_from_db()
    # The database timer the wake-up beat reads is the window's end.
    assert run.wake_at == waiting_reply.execute_after

    with _later(11):
        assert engine.wake_runs() == 1
        inline_tasks.drain()
    waiting_reply.refresh_from_db()
    assert waiting_reply.status == ActionStatus.EXECUTED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_undo_within_the_window_sends_nothing_and_puts_it_back_in_the_queue(
    inline_tasks, waiting_reply, alice, settings
):
    settings.UNDO_WINDOW_SECONDS = 10
    esc = waiting_reply.escalation
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    with _later(5):
        undo_approval(escalation_id=esc.pk, user=alice, via=Via.WEB)
    esc.refresh_from_db()
    waiting_reply.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN
    assert not Decision.objects.filter(escalation=esc).exists()
    assert waiting_reply.status == ActionStatus.ESCALATED
    assert waiting_reply.execute_after is None

    # The window's end comes and goes: the resume finds the reply with a person again.
    with _later(30):
        engine.wake_runs()
        inline_tasks.drain()
    assert not Effect.objects.filter(action=waiting_reply).exists()
    run = waiting_reply.run
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    human = list(run.trace.filter(kind=TraceKind.HUMAN).values_list("message", flat=True))
    assert any("approved send_reply" in m for m in human)
    assert any("undid the approval of send_reply" in m and "nothing was sent" in m for m in human)


def test_an_approval_cannot_be_undone_once_its_window_is_over(
    inline_tasks, waiting_reply, alice, carol, settings
):
    settings.UNDO_WINDOW_SECONDS = 10
    esc = waiting_reply.escalation
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    with pytest.raises(TooLateToUndo, match="only alice"):
        undo_approval(escalation_id=esc.pk, user=carol, via=Via.WEB)
    with _later(11), pytest.raises(TooLateToUndo, match="window is over"):
        undo_approval(escalation_id=esc.pk, user=alice, via=Via.WEB)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED


@pytest.mark.browser
def test_undo_in_the_browser_within_the_window_sends_nothing(
    inline_tasks, waiting_reply, alice, settings, page
):
    # Approved here (where the decision is made the window is set), undone in the browser.
    settings.UNDO_WINDOW_SECONDS = 120
    esc = waiting_reply.escalation
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    login(page, "alice")
    page.goto(f"/review/{esc.pk}/")
    outcome = page.locator("#settlement .outcome")
    assert "Queued: executes in" in outcome.inner_text()
    countdown = page.locator(".countdown")
    first = int(countdown.inner_text())
    assert 100 < first <= 120
    page.click("[data-undo]")
    page.wait_for_selector("#decision-form")
    assert "Undone: nothing was sent" in page.locator(".messages").inner_text()
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN
    wait_for(lambda: not Decision.objects.filter(escalation=esc).exists())
    assert not Effect.objects.filter(action=waiting_reply).exists()
