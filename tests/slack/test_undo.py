"""Undo in Slack: the message after an approval of something irreversible says when it runs
and offers the browser's Undo, through the same signed interactivity endpoint; it undoes
once, and after the window it is refused and changes nothing."""

import json
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from escalations.models import Decision, EscalationStatus
from escalations.slack import blocks
from workflows.models import Action, ActionStatus, TraceEvent, TraceKind

from .conftest import click, deliver_all, link, make_escalation, post_signed


@pytest.fixture
def approved(slack, agent, policies, alice, client, settings):
    """A customer reply alice approved in Slack, waiting out a minute's undo window."""
    settings.UNDO_WINDOW_SECONDS = 60
    esc = make_escalation(agent)
    deliver_all()
    link("U_ALICE", alice)
    assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 200
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED
    slack.calls.clear()
    return esc


def _said(told: mock.Mock) -> list[str]:
    return [c.kwargs["text"] for c in told.call_args_list]


def _undo_buttons(shown: dict) -> list[dict]:
    return [
        e
        for b in shown["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e.get("action_id") == blocks.UNDO
    ]


@pytest.mark.django_db
def test_the_message_after_an_approval_says_when_it_runs_and_offers_undo(approved, slack):
    deliver_all()
    [shown] = slack.all_messages()
    [undo] = _undo_buttons(shown)
    assert undo["value"] == str(approved.pk)
    assert "Queued: runs at" in json.dumps(shown["blocks"])
    # Only the Undo: the decision buttons are gone.
    assert not any(
        e.get("action_id") == blocks.APPROVE
        for b in shown["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    )


@pytest.mark.django_db
def test_undo_in_slack_puts_it_back_in_the_queue_once_for_a_double_click(
    approved, client, django_capture_on_commit_callbacks
):
    with (
        mock.patch("escalations.slack.interactions.enqueue_ephemeral") as told,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert post_signed(client, click(approved, blocks.UNDO)).status_code == 200
        # The second click of a double click (another request, not a replay).
        assert post_signed(client, click(approved, blocks.UNDO)).status_code == 200
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.OPEN
    assert not Decision.objects.filter(escalation=approved).exists()
    action = Action.objects.get(pk=approved.action_id)
    assert action.status == ActionStatus.ESCALATED and action.execute_after is None
    undone = TraceEvent.objects.filter(
        run_id=action.run_id, kind=TraceKind.HUMAN, message__contains="undid the approval"
    )
    assert [(t.actor, t.data["via"]) for t in undone] == [("alice", "slack")]
    first, second = _said(told)
    assert first.startswith("Undone: nothing was sent")
    assert second.startswith("Not undone: it is open")


@pytest.mark.django_db
def test_undo_in_slack_after_the_window_is_refused_and_changes_nothing(
    approved, client, slack, django_capture_on_commit_callbacks
):
    later = mock.patch(
        "django.utils.timezone.now", return_value=timezone.now() + timedelta(seconds=61)
    )
    with (
        later,
        mock.patch("escalations.slack.interactions.enqueue_ephemeral") as told,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert post_signed(client, click(approved, blocks.UNDO)).status_code == 200
    [said] = _said(told)
    assert said == "Not undone: its undo window is over: it has run or is running. Nothing changed."
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED
    assert Decision.objects.filter(escalation=approved).exists()
    assert Action.objects.get(pk=approved.action_id).status == ActionStatus.APPROVED
    # The message is brought up to date: no Undo any more.
    with later:
        deliver_all()
    [shown] = slack.all_messages()
    assert _undo_buttons(shown) == []


@pytest.mark.django_db
def test_only_the_approver_may_undo_in_slack(
    approved, client, carol, django_capture_on_commit_callbacks
):
    link("U_CAROL", carol)
    with (
        mock.patch("escalations.slack.interactions.enqueue_ephemeral") as told,
        django_capture_on_commit_callbacks(execute=True),
    ):
        post_signed(client, click(approved, blocks.UNDO, slack_user="U_CAROL"))
    [said] = _said(told)
    assert "only alice" in said
    approved.refresh_from_db()
    assert approved.status == EscalationStatus.APPROVED
