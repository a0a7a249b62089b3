"""A summary never blocks a transaction: the escalation commits at once with the template;
the model's summary is written after commit (through the outbox) and pushed live."""

from unittest import mock

import pytest

from escalations.actions.summaries import write_model_summary
from escalations.models import Escalation
from escalations.summary import PENDING_NOTE, facts
from workflows import events
from workflows.actions import propose_action, start_run
from workflows.prompts.models import ModelCall

pytestmark = pytest.mark.django_db

REPLY = {"ticket_id": "T-1", "to": "a@example.com", "body": "Hi"}


@pytest.fixture
def triage_run(policies, ticket, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        return start_run(workflow="support_triage", input=ticket)


def propose_reply(run):
    return propose_action(
        run=run,
        step_name="propose_actions",
        action_type="send_reply",
        payload=REPLY,
        confidence=0.9,
        rationale="answer",
    )


def escalate(run, django_capture_on_commit_callbacks):
    sent = []
    with (
        mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a))),
        mock.patch("escalations.summary.call_model") as model,
        django_capture_on_commit_callbacks(execute=True),
    ):
        action = propose_reply(run)
    assert not model.called, "no model call may happen inside the escalating transaction"
    return Escalation.objects.get(action=action), sent


def test_the_escalation_commits_with_the_template_summary(
    triage_run, django_capture_on_commit_callbacks
):
    esc, sent = escalate(triage_run, django_capture_on_commit_callbacks)
    assert esc.summary.startswith("triage-agent was working on")
    assert esc.summary.endswith(PENDING_NOTE)
    assert not ModelCall.objects.filter(prompt_name="escalation.summary").exists()
    # The model's summary is asked for only once the escalation committed, by id.
    assert ("escalations.tasks.write_summary", [str(esc.pk)]) in sent


def test_the_models_summary_appears_later_and_is_pushed_live(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)
    heard = []
    events.subscribe("escalation.summarised", heard.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert write_model_summary(escalation_id=esc.pk)
    finally:
        events._subscribers[("escalation.summarised", "after_commit")].remove(heard.append)
    esc.refresh_from_db()
    assert not esc.summary.endswith(PENDING_NOTE)
    assert ModelCall.objects.filter(prompt_name="escalation.summary", ok=True).count() == 1
    assert [e.ids["escalation_id"] for e in heard] == [str(esc.pk)]
    # Sent twice (a redelivered task): the written summary stays, no second model call.
    assert not write_model_summary(escalation_id=esc.pk)
    assert ModelCall.objects.filter(prompt_name="escalation.summary").count() == 1


def test_summary_facts_come_from_the_steps_the_workflow_declares(triage_run):
    run = triage_run
    run.state = {
        "workspace": {
            "outputs": {
                "classify": {"uncertain_about": "which plan they are on"},
                "draft_reply": {"uncertain_about": "the refund window"},
                "not_declared": {"uncertain_about": "never quoted"},
            }
        }
    }
    action = propose_reply(run)
    assert facts(action, [])["unsure"] == "which plan they are on; the refund window"
