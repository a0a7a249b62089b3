"""What a run's edges cost: a start is one statement, a decision one transaction of a few,
and what the engine's step does with an action (propose, execute) no more than it must."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escalations.actions import decide_escalation
from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
from tests.support.queries import statements
from workflows.actions import execute_action, propose_action, start_run
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    RunSnapshot,
    RunStatus,
    StepRun,
    TraceEvent,
    WorkflowRun,
)
from workflows.prompts.models import RunPromptPins

pytestmark = pytest.mark.django_db(transaction=True)


def _with_statements(fn):
    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return value, [q for q in statements(ctx) if q not in ("BEGIN", "COMMIT")]


def test_a_start_is_one_statement_with_every_row_of_its_plan(agent, inline_tasks):
    run, sql = _with_statements(lambda: start_run(workflow="fan_out", input={}))
    assert [q.split()[0] for q in sql] == ["WITH"]
    stored = WorkflowRun.objects.get(pk=run.pk)
    assert stored.status == RunStatus.PENDING and stored.agent_id == agent.pk
    assert stored.state_version == 1 and stored.state == run.state
    steps = list(StepRun.objects.filter(run=run).order_by("position"))
    assert [s.name for s in steps] == [p["name"] for p in run.plan]
    assert RunSnapshot.objects.filter(run=run, version=1).count() == 1
    assert RunPromptPins.objects.filter(run=run).count() == 1
    [planned] = TraceEvent.objects.filter(run=run)
    assert planned.message.startswith("run of ") and planned.data == {"plan": run.plan}
    # The pending row is the wake-up: the drain runs it.
    assert [t for _, t, _ in inline_tasks.sent] == ["workflows.tasks.drain_runs"]
    inline_tasks.drain()
    stored.refresh_from_db()
    assert stored.status == RunStatus.SUCCEEDED, stored.error


def test_a_retried_start_with_the_same_key_is_the_same_run(agent, inline_tasks):
    first = start_run(workflow="fan_out", input={}, idempotency_key="k-1")
    again = start_run(workflow="fan_out", input={}, idempotency_key="k-1")
    assert again.pk == first.pk
    assert WorkflowRun.objects.count() == 1
    assert StepRun.objects.filter(run=first).count() == len(first.plan)
    assert TraceEvent.objects.filter(run=first).count() == 1


def test_a_start_for_an_agent_with_no_profile_creates_nothing(agent, inline_tasks):
    from workflows.specs import InvalidInput

    agent.delete()
    with pytest.raises(InvalidInput, match="has no profile"):
        start_run(workflow="fan_out", input={})
    assert not WorkflowRun.objects.exists()
    assert not StepRun.objects.exists()


@pytest.fixture
def review_peer(agent):
    from bench.peers.caliber_flow import ACTION_TYPE, APPROVAL
    from escalations.models import AutonomyPolicy
    from workflows.models import PolicyOutcome

    AutonomyPolicy.objects.create(
        name="peer", workflow=APPROVAL, action_type=ACTION_TYPE, outcome=PolicyOutcome.REVIEW
    )
    return APPROVAL


def test_a_decision_is_one_transaction_of_few_statements(review_peer, inline_tasks, admin_user):
    run = start_run(workflow=review_peer, input={"item": "x"})
    inline_tasks.drain()
    inline_tasks.sent.clear()
    esc = Escalation.objects.get(action__run=run)
    decision, sql = _with_statements(
        lambda: decide_escalation(
            escalation_id=esc.pk, user=admin_user, verdict=Verdict.APPROVE, via=Via.API
        )
    )
    # Two statements: read the escalation, lock the run and ask whether the agent takes
    # webhooks (it does not); then decide, move the action, trace it and mark the run ready.
    assert sql == ["WITH escalations_escalation", "WITH escalations_escalation"], sql
    assert Decision.objects.get(escalation=esc).pk == decision.pk
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED
    action = Action.objects.get(pk=esc.action_id)
    assert (
        action.status == ActionStatus.APPROVED
        and action.feedback["by"] == admin_user.get_username()
    )
    assert TraceEvent.objects.filter(run=run, message__contains="approved").exists()
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error


def test_a_proposal_made_again_is_the_first_one(review_peer, inline_tasks, admin_user):
    run = start_run(workflow=review_peer, input={"item": "x"})
    inline_tasks.drain()
    first = Action.objects.get(run=run)

    def again() -> Action:
        return propose_action(
            run=WorkflowRun.objects.get(pk=run.pk),
            step_name=first.step_name,
            action_type=first.action_type,
            payload=first.payload,
            confidence=0.9,
            rationale="again",
        )

    action = again()
    assert action.pk == first.pk
    assert Action.objects.filter(run=run).count() == 1
    assert Escalation.objects.filter(action__run=run).count() == 1


def test_executing_writes_the_ledger_and_the_action_in_one_statement(
    review_peer, inline_tasks, admin_user
):
    run = start_run(workflow=review_peer, input={"item": "x"})
    inline_tasks.drain()
    action = Action.objects.get(run=run)
    Action.objects.filter(pk=action.pk).update(status=ActionStatus.APPROVED)
    action.refresh_from_db()
    done, sql = _with_statements(lambda: execute_action(action=action))
    assert done.status == ActionStatus.EXECUTED
    assert sql[:2] == ["SELECT workflows_effect", "WITH workflows_effect"], sql
    effect = Effect.objects.get(key=action.idempotency_key)
    assert effect.action_id == action.pk and effect.run_id == run.pk
    stored = Action.objects.get(pk=action.pk)
    assert stored.status == ActionStatus.EXECUTED and stored.result == effect.result
    assert stored.executed_at is not None
    # Once: executing it again finds the ledger's row and applies nothing.
    Action.objects.filter(pk=action.pk).update(status=ActionStatus.APPROVED)
    stored.refresh_from_db()
    execute_action(action=stored)
    assert Effect.objects.filter(key=action.idempotency_key).count() == 1
