"""Every decision becomes its outcome at once: actions settle one by one, a person's answer is
acted on, a rejection hands the work to a named person, outside events wake waiting runs."""

from datetime import timedelta

import pytest
from django.utils import timezone

from escalations.actions import decide_escalation
from escalations.models import Escalation, EscalationStatus, Verdict, Via
from tests.conftest import wait_for, wait_for_run
from workflows.actions import start_run
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    Outcome,
    OutcomeQuality,
    PolicyOutcome,
    RunStatus,
    StepStatus,
    WorkflowRun,
)
from workflows.run_events import deliver_event

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def routing_reviewed_by_billing(policies, billing):
    """Routing goes to a person on another team (Billing), with no SLA: it can wait long."""
    routing = policies[2]
    routing.outcome = PolicyOutcome.REVIEW
    routing.team = billing
    routing.save()
    return routing


def _escalated(run, action_type):
    return wait_for(
        lambda: (
            Action.objects.filter(run=run, action_type=action_type, status=ActionStatus.ESCALATED)
            .order_by("-revision_round")
            .first()
        )
    )


def test_an_approved_reply_is_sent_while_a_sibling_escalation_still_waits(
    celery_worker, policies, routing_reviewed_by_billing, ticket, alice, bob
):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    reply = _escalated(run, "send_reply")
    route = _escalated(run, "route_to_team")
    assert route.escalation.team.name == "Billing"

    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    # Sent at once, through the ledger, though Billing has not looked at the routing yet.
    wait_for(lambda: Effect.objects.filter(action=reply).exists())
    reply.refresh_from_db()
    assert reply.status == ActionStatus.EXECUTED
    route.refresh_from_db()
    assert route.status == ActionStatus.ESCALATED
    wait_for_run(run, RunStatus.WAITING)
    assert run.steps.get(name="act").status == StepStatus.WAITING

    decide_escalation(
        escalation_id=route.escalation.pk, user=bob, verdict=Verdict.APPROVE, via=Via.WEB
    )
    wait_for_run(run, RunStatus.SUCCEEDED)
    assert Effect.objects.filter(action=reply).count() == 1
    assert Effect.objects.filter(action__run=run).count() == 3


def test_respond_makes_the_agent_revise_and_the_approved_revision_is_sent(
    celery_worker, policies, ticket, alice
):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    reply = _escalated(run, "send_reply")

    decide_escalation(
        escalation_id=reply.escalation.pk,
        user=alice,
        verdict=Verdict.RESPOND,
        via=Via.WEB,
        reason="Ask for their order number first.",
    )
    revision = wait_for(lambda: Action.objects.filter(revision_of=reply).first())
    # A new escalation, linked to the first, with the reviewer's point acted on.
    assert revision.status == ActionStatus.ESCALATED
    assert revision.revision_round == 1
    assert "could you send us your order number?" in revision.payload["body"]
    assert revision.payload["body"] != reply.payload["body"]
    reply.refresh_from_db()
    assert reply.verdict_label == "answered"
    assert not Effect.objects.filter(action=reply).exists()
    assert Escalation.objects.get(action=revision).status == EscalationStatus.OPEN

    decide_escalation(
        escalation_id=revision.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    wait_for_run(run, RunStatus.SUCCEEDED)
    revision.refresh_from_db()
    assert revision.status == ActionStatus.EXECUTED
    sent = Effect.objects.get(action__run=run, action__action_type="send_reply")
    assert sent.action_id == revision.pk
    assert "your order number" in revision.payload_to_execute["body"]
    assert run.trace.filter(message__contains="revised send_reply after alice answered").exists()


def test_answering_every_revision_hands_the_ticket_off_after_the_declared_rounds(
    celery_worker, policies, ticket, alice
):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    for round_ in range(3):
        reply = wait_for(
            lambda r=round_: Action.objects.filter(
                run=run,
                action_type="send_reply",
                revision_round=r,
                status=ActionStatus.ESCALATED,
            ).first()
        )
        decide_escalation(
            escalation_id=reply.escalation.pk,
            user=alice,
            verdict=Verdict.RESPOND,
            via=Via.WEB,
            reason="Apologise first.",
        )
    # Never "succeeded": two revisions were answered again, so a person owns the ticket.
    wait_for_run(run, RunStatus.HANDED_OFF)
    assert "handed to alice" in run.error
    assert not Effect.objects.filter(action__run=run, action__action_type="send_reply").exists()
    assert Action.objects.filter(run=run, action_type="send_reply").count() == 3


def test_a_customer_reply_delivered_as_an_event_wakes_the_waiting_follow_up(
    celery_worker, policies, ticket, agent
):
    policies[1].irreversible_requires_review = False
    policies[1].min_confidence = 0.1
    policies[1].save()
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.SUCCEEDED)
    follow_up = wait_for(lambda: WorkflowRun.objects.filter(parent=run).first())
    wait_for_run(follow_up, RunStatus.WAITING)
    # Its deadline is six hours away: only the event can wake it now.
    assert follow_up.wake_at > timezone.now() + timedelta(hours=5)

    delivered = deliver_event(
        run_id=run.pk,
        kind="customer_replied",
        data={"text": "Still charged twice!"},
        actor="mail-gateway",
        key="msg-1",
    )
    assert delivered.woke == 1
    wait_for_run(follow_up, RunStatus.SUCCEEDED)
    outcome = Outcome.objects.get(data__follow_up_run=str(follow_up.pk))
    assert outcome.quality == OutcomeQuality.BAD
    run.refresh_from_db()
    assert run.state["conversation"]["messages"][-1]["content"] == "Still charged twice!"
    # The same key again changes nothing.
    again = deliver_event(run_id=run.pk, kind="customer_replied", data={"text": "x"}, key="msg-1")
    assert again.duplicate and again.woke == 0
