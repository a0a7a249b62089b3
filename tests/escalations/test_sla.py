import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from escalations.actions import (
    AlreadyDecided,
    decide_escalation,
    expire_due_escalations,
    handle_sla_breach,
)
from escalations.actions.decisions import REVISION_GRACE
from escalations.actions.sla import SYSTEM_USERNAME
from escalations.models import Decision, Escalation, EscalationStatus, Team, Verdict, Via
from workflows.actions import propose_action
from workflows.models import Action, ActionStatus, RunStatus, WorkflowRun

from .conftest import REFUND, escalation_of

pytestmark = pytest.mark.django_db


def _later(esc: Escalation, minutes: int = 31):
    return esc.created_at + timedelta(minutes=minutes)


@pytest.fixture
def legal(db) -> Team:
    return Team.objects.create(name="Legal", slug="legal")


def test_an_escalation_gets_its_sla_due_time_from_the_policy(refund_policy, propose):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    assert esc.sla_due_at == esc.created_at + timedelta(minutes=30)


def test_nothing_happens_before_the_sla_passes(refund_policy, propose):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    assert expire_due_escalations(now=_later(esc, 29)) == {}
    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc, 29)) == "nothing"


def test_a_breach_moves_it_down_the_chain_and_tells_both_teams(
    refund_policy, propose, billing, legal, monkeypatch
):
    told = []
    monkeypatch.setattr(
        "escalations.notify.escalation_changed",
        lambda esc, previous_team_id=None: told.append(("changed", esc.team_id, previous_team_id)),
    )
    monkeypatch.setattr(
        "escalations.notify.escalation_opened", lambda esc: told.append(("opened", esc.team_id))
    )
    refund_policy(sla_minutes=30, escalation_chain="billing, legal", expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    support_id = esc.team_id
    told.clear()

    assert expire_due_escalations(now=_later(esc)) == {"moved": 1}
    esc.refresh_from_db()
    assert (esc.team_id, esc.hops, esc.status) == (billing.pk, 1, EscalationStatus.OPEN)
    assert esc.sla_due_at == _later(esc) + timedelta(minutes=30)
    assert told == [("changed", billing.pk, support_id), ("opened", billing.pk)]

    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc, 62)) == "moved"
    esc.refresh_from_db()
    assert esc.team_id == legal.pk
    trace = list(esc.action.run.trace.values_list("message", flat=True))
    assert (
        "no decision within 30 min at Support: escalated to Billing (step 1 of 2 in the chain)"
        in trace
    )


def test_a_claim_does_not_survive_a_move(refund_policy, propose, billing, alice):
    refund_policy(sla_minutes=30, escalation_chain="billing", expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    Escalation.objects.filter(pk=esc.pk).update(status=EscalationStatus.CLAIMED, claimed_by=alice)
    handle_sla_breach(escalation_id=esc.pk, now=_later(esc))
    esc.refresh_from_db()
    assert (esc.status, esc.claimed_by) == (EscalationStatus.OPEN, None)


def test_at_the_end_of_the_chain_a_declared_reject_applies_as_the_system_user(
    refund_policy, propose, django_capture_on_commit_callbacks
):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    # As the engine leaves it while its step waits for the person.
    WorkflowRun.objects.filter(pk=esc.action.run_id).update(status=RunStatus.WAITING)
    with django_capture_on_commit_callbacks() as callbacks:
        assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc)) == "rejected"
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.EXPIRED
    decision = esc.decision
    assert (decision.verdict, decision.via) == (Verdict.REJECT, Via.SYSTEM)
    assert decision.decided_by.username == SYSTEM_USERNAME
    assert not decision.decided_by.is_active
    assert "the policy declares: reject on expiry" in decision.reason
    assert Action.objects.get(pk=esc.action_id).status == ActionStatus.REJECTED
    # The run is marked ready for the drain, which is woken (and the queues told) after
    # commit.
    assert WorkflowRun.objects.get(pk=esc.action.run_id).ready_at is not None
    assert len(callbacks) >= 2


def test_a_declared_approve_on_expiry_approves(refund_policy, propose):
    refund_policy(sla_minutes=30, expiry_behaviour="approve")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc)) == "approved"
    assert Action.objects.get(pk=esc.action_id).status == ActionStatus.APPROVED
    assert Escalation.objects.get(pk=esc.pk).status == EscalationStatus.EXPIRED


def test_a_declared_reroute_moves_it_once_and_leaves_it_open(refund_policy, propose, legal):
    refund_policy(sla_minutes=30, expiry_behaviour="reroute", expiry_team=legal)
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc)) == "rerouted"
    esc.refresh_from_db()
    assert (esc.team_id, esc.status, esc.sla_due_at) == (legal.pk, EscalationStatus.OPEN, None)
    assert expire_due_escalations(now=_later(esc, 600)) == {}


def test_without_a_declared_behaviour_nothing_is_decided_implicitly(refund_policy, propose):
    # Written around validation on purpose: the database may hold what the admin would refuse.
    refund_policy(sla_minutes=30)
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc)) == "breached"
    esc.refresh_from_db()
    assert (esc.status, esc.sla_due_at) == (EscalationStatus.OPEN, None)
    assert not Decision.objects.exists()


def test_the_policy_refuses_an_sla_without_an_expiry_behaviour(support):
    from django.core.exceptions import ValidationError

    from escalations.actions import save_policy
    from escalations.models import AutonomyPolicy

    with pytest.raises(ValidationError) as exc:
        save_policy(policy=AutonomyPolicy(name="x", outcome="review", sla_minutes=10, team=support))
    assert "expiry_behaviour" in exc.value.message_dict


def test_a_decision_first_leaves_nothing_for_the_timer(refund_policy, propose, alice):
    refund_policy(sla_minutes=30, expiry_behaviour="approve")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    decide_escalation(
        escalation_id=esc.pk, user=alice, verdict=Verdict.REJECT, via=Via.WEB, reason="no"
    )
    assert handle_sla_breach(escalation_id=esc.pk, now=_later(esc)) == "nothing"
    assert Decision.objects.get().decided_by == alice


def test_expiry_first_refuses_the_late_decision_naming_the_winner(refund_policy, propose, alice):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    handle_sla_breach(escalation_id=esc.pk, now=_later(esc))
    with pytest.raises(AlreadyDecided) as exc:
        decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    assert f"already expired by {SYSTEM_USERNAME} via system" in str(exc.value)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("approvals", [1, 2])
def test_expiry_racing_a_decision_has_exactly_one_outcome(
    refund_policy, propose, alice, carol, approvals, monkeypatch
):
    # Kept off the broker: a worker left advancing these runs would race the test's flush,
    # and could reach the triage's act step after the timer approved, executing the action.
    # That includes the outbox relay of each run's start.
    woken: list[str] = []

    def send(task, args, countdown=0):
        if task == "workflows.tasks.resume_run":
            woken.append(args[0])

    monkeypatch.setattr("workflows.outbox.send", send)
    refund_policy(sla_minutes=30, expiry_behaviour="approve", approvals_required=approvals)
    outcomes = []
    for i in range(6):
        esc = escalation_of(propose("issue_refund", {"ticket_id": f"T-{i}", "amount": 5}, 0.9))
        # As the engine leaves it while its step waits for the person.
        WorkflowRun.objects.filter(pk=esc.action.run_id).update(status=RunStatus.WAITING)
        if approvals == 2:
            decide_escalation(
                escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB
            )
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def timer(esc=esc, barrier=barrier, results=results):
            barrier.wait()
            try:
                results["timer"] = handle_sla_breach(escalation_id=esc.pk, now=_later(esc))
            finally:
                connection.close()

        def person(esc=esc, barrier=barrier, results=results):
            barrier.wait()
            try:
                decide_escalation(
                    escalation_id=esc.pk,
                    user=alice,
                    verdict=Verdict.REJECT,
                    via=Via.WEB,
                    reason="no",
                )
                results["person"] = "rejected"
            except AlreadyDecided:
                results["person"] = "refused"
            finally:
                connection.close()

        threads = [threading.Thread(target=timer), threading.Thread(target=person)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        esc.refresh_from_db()
        decisions = list(Decision.objects.filter(escalation=esc))
        assert len(decisions) == 1
        action = Action.objects.get(pk=esc.action_id)
        if results["person"] == "rejected":
            assert results["timer"] == "nothing"
            assert esc.status == EscalationStatus.REJECTED
            assert action.status == ActionStatus.REJECTED
        else:
            assert results["timer"] == "approved"
            assert esc.status == EscalationStatus.EXPIRED
            assert action.status == ActionStatus.APPROVED
        # Whoever won, the run was marked ready for the drain once (the loser's mark rolled
        # back with it), and no resume task of its own was sent.
        assert WorkflowRun.objects.get(pk=esc.action.run_id).ready_at is not None
        assert woken == []
        outcomes.append(results["person"])
    assert set(outcomes) <= {"rejected", "refused"}


def test_the_beat_task_scans_what_is_due_now(refund_policy, propose, billing):
    from escalations.tasks import check_slas

    refund_policy(sla_minutes=30, escalation_chain="billing", expiry_behaviour="reject")
    due = escalation_of(propose("issue_refund", REFUND, 0.9))
    later = escalation_of(propose("issue_refund", {"ticket_id": "T-2", "amount": 5}, 0.9))
    Escalation.objects.filter(pk=due.pk).update(sla_due_at=timezone.now() - timedelta(seconds=1))
    assert check_slas() == {"moved": 1}
    assert Escalation.objects.get(pk=due.pk).team_id == billing.pk
    assert Escalation.objects.get(pk=later.pk).team_id != billing.pk


def test_an_approval_after_the_sla_ran_out_is_refused_before_the_sweep_runs(
    refund_policy, propose, alice
):
    from escalations.actions.decisions import DeadlinePassed

    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    # The SLA ran out a second ago; the sweep has not handled it yet.
    Escalation.objects.filter(pk=esc.pk).update(sla_due_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(DeadlinePassed, match="SLA ran out"):
        decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN
    assert not Decision.objects.exists()
    assert Action.objects.get().status == ActionStatus.ESCALATED
    # The sweep then applies the policy's expiry behaviour, as it would have anyway.
    assert handle_sla_breach(escalation_id=esc.pk) == "rejected"


def test_an_approval_before_the_sla_runs_out_still_counts(refund_policy, propose, alice):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    esc = escalation_of(propose("issue_refund", REFUND, 0.9))
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    assert Escalation.objects.get().status == EscalationStatus.APPROVED


def _revise(action: Action, confidence: float = 0.9) -> Escalation:
    assert action.run is not None
    revision = propose_action(
        run=action.run,
        step_name=action.step_name,
        action_type=action.action_type,
        payload={**action.payload, "amount": 100},
        confidence=confidence,
        rationale="asked for the order number first",
        revision_of=action,
    )
    return escalation_of(revision)


def test_a_revision_is_due_when_the_escalation_it_answers_was(refund_policy, propose):
    """The agent's revision after a Respond keeps its customer's place in the queue: due when
    the first escalation was, not a fresh SLA later (it sank under newer tickets)."""
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    first = escalation_of(propose("issue_refund", REFUND, 0.9))
    Escalation.objects.filter(pk=first.pk).update(sla_due_at=timezone.now() + timedelta(minutes=12))
    first.refresh_from_db()
    newer = escalation_of(propose("issue_refund", REFUND, 0.9))
    revision = _revise(first.action)
    assert revision.sla_due_at == first.sla_due_at
    assert revision.due_without_sla_at <= first.due_without_sla_at
    assert revision.sla_due_at < newer.sla_due_at


def test_a_revision_never_arrives_already_expired(refund_policy, propose):
    refund_policy(sla_minutes=30, expiry_behaviour="reject")
    first = escalation_of(propose("issue_refund", REFUND, 0.9))
    Escalation.objects.filter(pk=first.pk).update(sla_due_at=timezone.now() - timedelta(minutes=1))
    before = timezone.now()
    revision = _revise(first.action)
    assert revision.sla_due_at >= before + REVISION_GRACE
    assert revision.sla_due_at <= timezone.now() + REVISION_GRACE
    expire_due_escalations()
    revision.refresh_from_db()
    assert revision.status == EscalationStatus.OPEN
