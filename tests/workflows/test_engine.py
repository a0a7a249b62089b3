"""The engine through a real `celery worker` process, on PostgreSQL and Redis."""

import threading
from unittest import mock

import pytest
from django.db import connection

from escalations.actions import decide_escalation
from escalations.models import Escalation, EscalationStatus, Verdict, Via
from tests.conftest import wait_for_run
from workflows import engine
from workflows.actions import start_run
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    RunStatus,
    StepRun,
    TraceKind,
    WorkflowRun,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_a_run_whose_actions_all_act_alone_finishes_by_itself(
    celery_worker, policies, ticket, agent
):
    policies[1].irreversible_requires_review = False
    policies[1].min_confidence = 0.1
    policies[1].save()
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.SUCCEEDED)
    assert set(Action.objects.filter(run=run).values_list("status", flat=True)) == {
        ActionStatus.EXECUTED
    }
    assert Effect.objects.filter(action__run=run).count() == 3
    assert not Escalation.objects.exists()
    assert (
        list(StepRun.objects.filter(run=run).values_list("status", flat=True)) == ["succeeded"] * 7
    )


def test_an_escalated_action_makes_the_run_wait_until_a_person_approves(
    celery_worker, policies, ticket, alice
):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    reply = Action.objects.get(run=run, action_type="send_reply")
    assert reply.status == ActionStatus.ESCALATED
    assert not Effect.objects.filter(action=reply).exists()
    # What could run alone already did.
    assert Effect.objects.filter(action__run=run).count() == 2

    decide_escalation(
        escalation_id=reply.escalation.pk,
        user=alice,
        verdict=Verdict.APPROVE,
        via=Via.WEB,
        edited_payload={**reply.payload, "body": "Edited by alice"},
    )
    wait_for_run(run, RunStatus.SUCCEEDED)
    reply.refresh_from_db()
    assert reply.status == ActionStatus.EXECUTED
    assert Effect.objects.get(action=reply).result["to"] == ticket["customer"]
    kinds = list(run.trace.values_list("kind", flat=True))
    assert TraceKind.HUMAN in kinds and TraceKind.ESCALATED in kinds


def test_a_rejected_reply_is_handed_to_a_named_person_and_the_run_is_handed_off(
    celery_worker, policies, ticket, alice
):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    reply = Action.objects.get(run=run, action_type="send_reply")
    decide_escalation(
        escalation_id=reply.escalation.pk,
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Never promise a refund",
    )
    # Not "succeeded": the customer got no reply from the agent; a person has the ticket.
    wait_for_run(run, RunStatus.HANDED_OFF)
    reply.refresh_from_db()
    assert reply.status == ActionStatus.REJECTED
    assert not Effect.objects.filter(action=reply).exists()
    fallback = Effect.objects.get(run=run, key__contains=f"fallback-{reply.pk}")
    assert fallback.result == {
        "ticket_id": ticket["ticket_id"],
        "assigned_to": "alice",
        "status": "open",
    }
    run.refresh_from_db()
    assert run.error == "send_reply handed to alice (alice: Never promise a refund)"
    act = run.state["workspace"]["outputs"]["act"]
    assert act["handed_off"] == [
        {
            "action_type": "send_reply",
            "owner": "alice",
            "reason": "Never promise a refund",
            "by": "alice",
        }
    ]
    assert act["feedback"] == [
        {"action_type": "send_reply", "verdict": "reject", "reason": "Never promise a refund"}
    ]
    assert run.trace.filter(
        message__contains="Never promise a refund", kind=TraceKind.OBSERVED
    ).exists()
    assert run.trace.filter(message__contains="alice now owns it").exists()


def test_advancing_a_run_again_applies_no_effect_twice(celery_worker, policies, ticket, alice):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    reply = Action.objects.get(run=run, action_type="send_reply")
    barrier = threading.Barrier(3)

    def advance():
        barrier.wait()
        try:
            engine.advance_run(run_id=run.pk)
        finally:
            connection.close()

    # The decision's own enqueue reaches the worker while two more deliveries run here.
    threads = [threading.Thread(target=advance) for _ in range(2)]
    for t in threads:
        t.start()
    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    barrier.wait()
    for t in threads:
        t.join()
    wait_for_run(run, RunStatus.SUCCEEDED)
    engine.advance_run(run_id=run.pk)
    assert Effect.objects.filter(action__run=run).count() == 3
    assert run.trace.filter(kind=TraceKind.EXECUTED).count() == 3
    assert run.trace.filter(message="run succeeded").count() == 1


def test_a_step_that_keeps_crashing_fails_the_run_after_its_attempts(celery_worker, agent):
    run = start_run(workflow="always_crashes", input={})
    wait_for_run(run, RunStatus.FAILED, timeout=30)
    step = StepRun.objects.get(run=run)
    assert step.attempts == 2
    assert step.status == "failed"
    assert "the tool is down" in run.error


def test_bad_input_is_refused_before_a_run_exists(policies):
    """Checked against the workflow's input schema at the start, not dead-lettered later."""
    from workflows.specs import InvalidInput

    with pytest.raises(InvalidInput, match="ticket_id") as exc:
        start_run(workflow="support_triage", input={"subject": "no body"})
    assert {tuple(e["loc"]) for e in exc.value.errors} == {
        ("ticket_id",),
        ("body",),
        ("customer",),
    }
    assert not WorkflowRun.objects.exists()
    assert not Action.objects.exists()


def test_the_reconciler_picks_up_a_run_whose_enqueue_was_lost(celery_worker, policies, ticket):
    from datetime import timedelta

    from django.utils import timezone

    from workflows.models import Outbox, WorkflowRun

    # A run committed, but its send never reached the broker (the process died between
    # commit and send): no outbox row stands for it, the pending run itself does.
    with mock.patch("workflows.outbox.send"):
        run = start_run(workflow="support_triage", input=ticket)
    assert not Outbox.objects.exists()
    WorkflowRun.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    assert engine.reconcile_runs(stall_seconds=60) == 1
    wait_for_run(run, RunStatus.WAITING)


def test_decided_escalations_stay_decided(policies, ticket, alice, celery_worker):
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING)
    esc = Escalation.objects.get(action__run=run)
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.API)
    wait_for_run(run, RunStatus.SUCCEEDED)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED
