import threading
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from escalations.actions import AlreadyDecided, decide_escalation
from escalations.models import AgentProfile, Decision, Escalation, EscalationStatus, Verdict, Via
from tests.support.queries import statements
from workflows.actions import propose_action, start_run
from workflows.models import Action, ActionStatus, Outbox, RunStatus, WorkflowRun
from workflows.outbox import DRAIN_RESUMES, RESUME


@pytest.fixture
def escalation(policies, ticket, django_capture_on_commit_callbacks) -> Escalation:
    with django_capture_on_commit_callbacks(execute=False):
        run = start_run(workflow="support_triage", input=ticket)
    action = propose_action(
        run=run,
        step_name="propose_actions",
        action_type="send_reply",
        payload={"ticket_id": "T-1", "to": "a@example.com", "body": "Hi"},
        confidence=0.9,
        rationale="answer",
    )
    assert action.status == ActionStatus.ESCALATED
    return action.escalation


def _waiting(escalation: Escalation) -> WorkflowRun:
    """The run as the engine leaves it once its step waits for the person."""
    run_id = escalation.action.run_id
    assert run_id is not None
    WorkflowRun.objects.filter(pk=run_id).update(status=RunStatus.WAITING)
    return WorkflowRun.objects.get(pk=run_id)


@pytest.mark.django_db
def test_approving_records_one_decision_and_approves_the_action(
    escalation, alice, django_capture_on_commit_callbacks
):
    run = _waiting(escalation)
    with django_capture_on_commit_callbacks() as callbacks:
        decision = decide_escalation(
            escalation_id=escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    assert decision.decided_by == alice
    assert Decision.objects.get(escalation=escalation).pk == decision.pk
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.APPROVED
    assert Action.objects.get(pk=escalation.action_id).status == ActionStatus.APPROVED
    # The waiting run is marked ready in the deciding transaction: the drain of decided
    # runs claims it. No resume task, no outbox row: one wake-up flag for the drain,
    # and every transport told, all only after commit.
    run.refresh_from_db()
    assert run.ready_at is not None
    names = [c.__qualname__ for c in callbacks]
    assert not any(n.startswith("send_after_commit") for n in names)
    # The live queue, long-polls and the rest hear of it through the events module's
    # one after-commit dispatch.
    assert any(n.startswith("publish") for n in names)
    assert not Outbox.objects.filter(task__in=[RESUME, DRAIN_RESUMES]).exists()
    with (
        mock.patch("workflows.outbox.send") as send,
        mock.patch("workflows.outbox._broker_client", return_value=None),
    ):
        for c in callbacks:
            if c.__qualname__.startswith("record_decision"):
                c()
    send.assert_called_once_with(DRAIN_RESUMES, [], 0)


@pytest.mark.django_db
def test_a_decision_on_a_run_not_waiting_sends_nothing(
    escalation, alice, django_capture_on_commit_callbacks
):
    """The run is not waiting: a step or a round of it is in flight, which coordinates
    again under the run's row lock once this decision commits, and reads the action there."""
    with django_capture_on_commit_callbacks() as callbacks:
        decide_escalation(
            escalation_id=escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    run = WorkflowRun.objects.get(pk=escalation.action.run_id)
    assert run.status == RunStatus.PENDING and run.ready_at is None
    names = [c.__qualname__ for c in callbacks]
    assert not any(n.startswith(("send_after_commit", "record_decision")) for n in names)


@pytest.mark.django_db
def test_a_wake_up_the_broker_refused_is_kept_in_the_outbox_for_beat(
    escalation, alice, django_capture_on_commit_callbacks
):
    _waiting(escalation)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        decide_escalation(
            escalation_id=escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    with (
        mock.patch("workflows.outbox.send", side_effect=ConnectionError("broker down")),
        mock.patch("workflows.outbox._broker_client", return_value=None),
    ):
        for c in callbacks:
            if c.__qualname__.startswith("record_decision"):
                c()
    [row] = Outbox.objects.filter(task=DRAIN_RESUMES)
    assert row.attempts == 1 and "broker down" in row.last_error


@pytest.mark.django_db
def test_an_edited_payload_is_what_will_execute(escalation, alice):
    edited = {"ticket_id": "T-1", "to": "a@example.com", "body": "Hello, fixed."}
    decide_escalation(
        escalation_id=escalation.pk,
        user=alice,
        verdict=Verdict.APPROVE,
        via=Via.WEB,
        edited_payload=edited,
    )
    action = Action.objects.get(pk=escalation.action_id)
    assert action.payload_to_execute == edited
    assert action.payload["body"] == "Hi"


@pytest.mark.django_db
def test_rejecting_needs_a_reason_and_changes_nothing_without_one(escalation, alice):
    with pytest.raises(ValidationError):
        decide_escalation(
            escalation_id=escalation.pk,
            user=alice,
            verdict=Verdict.REJECT,
            via=Via.WEB,
            reason="  ",
        )
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_a_reviewer_from_another_team_cannot_decide(escalation, bob):
    with pytest.raises(Http404):
        decide_escalation(
            escalation_id=escalation.pk, user=bob, verdict=Verdict.APPROVE, via=Via.WEB
        )
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_an_admin_can_decide_any_teams_escalation(escalation, admin_user):
    decide_escalation(
        escalation_id=escalation.pk, user=admin_user, verdict=Verdict.APPROVE, via=Via.WEB
    )
    assert Decision.objects.get().decided_by == admin_user


@pytest.mark.django_db
def test_the_second_decision_is_refused_and_names_the_first(escalation, alice, carol):
    decide_escalation(
        escalation_id=escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.SLACK
    )
    with pytest.raises(AlreadyDecided) as exc:
        decide_escalation(
            escalation_id=escalation.pk,
            user=carol,
            verdict=Verdict.REJECT,
            via=Via.WEB,
            reason="no",
        )
    assert "approved by alice via slack" in str(exc.value)
    assert Decision.objects.count() == 1
    assert Action.objects.get(pk=escalation.action_id).status == ActionStatus.APPROVED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", range(5))
def test_two_tabs_deciding_at_once_record_exactly_one_decision(
    policies, ticket, alice, carol, attempt
):
    # Built directly: start_run would enqueue the run for whichever worker is listening.
    run = WorkflowRun.objects.create(
        workflow="support_triage",
        workflow_version=1,
        agent=policies[0].agent or AgentProfile.objects.get(),
        input=ticket,
        status=RunStatus.WAITING,
    )
    action = propose_action(
        run=run,
        step_name="p",
        action_type="send_reply",
        payload={"ticket_id": "T", "to": "x@example.com", "body": "b"},
        confidence=0.9,
        rationale="",
    )
    esc_id = action.escalation.pk
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def decide(user, verdict):
        try:
            barrier.wait()
            decide_escalation(
                escalation_id=esc_id, user=user, verdict=verdict, via=Via.WEB, reason="because"
            )
            outcomes[user.username] = "won"
        except AlreadyDecided as exc:
            outcomes[user.username] = str(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(alice, Verdict.APPROVE)),
        threading.Thread(target=decide, args=(carol, Verdict.REJECT)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v == "won" for v in outcomes.values()) == [False, True]
    decision = Decision.objects.get(escalation_id=esc_id)
    loser = next(u for u, v in outcomes.items() if v != "won")
    assert f"by {decision.decided_by.username} via web" in outcomes[loser]
    assert WorkflowRun.objects.count() == 1


@pytest.mark.django_db
def test_a_teammate_decides_in_two_statements_and_an_outsider_finds_nothing(
    escalation, alice, bob, django_capture_on_commit_callbacks
):
    """The reviewer's teams, the escalation with its action and team, the run's row lock and
    the agent's webhook: one read. Then the one deciding statement (the run marked ready)."""
    run = _waiting(escalation)
    with CaptureQueriesContext(connection) as ctx, pytest.raises(Http404):
        decide_escalation(
            escalation_id=escalation.pk, user=bob, verdict=Verdict.APPROVE, via=Via.WEB
        )
    assert statements(ctx) == ["WITH escalations_escalation"]  # bob is in billing: nothing
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN
    with (
        django_capture_on_commit_callbacks(execute=False),
        CaptureQueriesContext(connection) as ctx,
    ):
        decide_escalation(
            escalation_id=escalation.pk,
            user=alice,
            verdict=Verdict.REJECT,
            via=Via.WEB,
            reason="not like this",
        )
    assert statements(ctx) == ["WITH escalations_escalation", "WITH escalations_escalation"]
    run.refresh_from_db()
    assert run.ready_at is not None
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.REJECTED
