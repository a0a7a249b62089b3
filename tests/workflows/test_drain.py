"""The drain: pending runs are the start queue, claimed in batches by a drain woken once
(engine.drain_runs, outbox.wake_drain)."""

from __future__ import annotations

import pytest

from workflows import engine, outbox
from workflows.actions import start_run
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

DRAIN = "workflows.tasks.drain_runs"


def _sent(inline_tasks) -> list[str]:
    return [task for _, task, _ in inline_tasks.sent]


def test_many_starts_send_one_wake_up_and_one_drain_runs_them_all(agent, inline_tasks):
    runs = [start_run(workflow="fan_out", input={}) for _ in range(5)]
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.sent.clear()
    # Batches of 2 then 4: the full first batch woke a second drain for another worker.
    assert engine.drain_runs() == 5
    assert _sent(inline_tasks).count(DRAIN) == 1
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING  # its fan-out queued, the lease let go
        assert run.lease_owner == ""


def test_the_drain_clears_the_flag_first_so_a_later_start_wakes_again(agent, inline_tasks):
    start_run(workflow="fan_out", input={})
    start_run(workflow="fan_out", input={})
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.drain()
    inline_tasks.sent.clear()
    late = start_run(workflow="fan_out", input={})
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.drain()
    late.refresh_from_db()
    assert late.status == RunStatus.SUCCEEDED, late.error


def test_a_run_someone_holds_is_not_claimed(agent, inline_tasks):
    held = start_run(workflow="fan_out", input={})
    WorkflowRun.objects.filter(pk=held.pk).update(lease_owner="someone-else")
    free = start_run(workflow="fan_out", input={})
    assert engine.drain_runs() == 1
    held.refresh_from_db()
    free.refresh_from_db()
    assert held.status == RunStatus.PENDING and held.lease_owner == "someone-else"
    assert free.status == RunStatus.RUNNING


def test_past_its_time_a_drain_hands_the_rest_back_and_wakes_another(agent, inline_tasks):
    runs = [start_run(workflow="fan_out", input={}) for _ in range(3)]
    inline_tasks.sent.clear()
    outbox.drain_woken()
    assert engine.drain_runs(seconds=0) == 0
    assert _sent(inline_tasks) == [DRAIN]
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.PENDING and run.lease_owner == ""
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error


def test_a_wake_up_the_broker_refused_waits_in_the_outbox(agent, monkeypatch):
    from workflows.models import Outbox

    def broker_gone(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(outbox, "send", broker_gone)
    start_run(workflow="fan_out", input={})
    [row] = Outbox.objects.all()
    assert row.task == DRAIN and row.attempts == 1
    # The flag went with the failed send: the next start tries again.
    monkeypatch.undo()
    sent: list[str] = []
    monkeypatch.setattr(outbox, "send", lambda task, args, countdown=0: sent.append(task))
    start_run(workflow="fan_out", input={})
    assert sent == [DRAIN]


# --- decisions: the deciding transaction marks a waiting run ready -------------------------


@pytest.fixture
def review_peer(agent):
    from bench.peers.caliber_flow import ACTION_TYPE, APPROVAL
    from escalations.models import AutonomyPolicy
    from workflows.models import PolicyOutcome

    AutonomyPolicy.objects.create(
        name="peer", workflow=APPROVAL, action_type=ACTION_TYPE, outcome=PolicyOutcome.REVIEW
    )
    return APPROVAL


def _waiting(inline_tasks, workflow: str) -> WorkflowRun:
    run = start_run(workflow=workflow, input={"item": "x"})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    inline_tasks.sent.clear()
    return run


def test_a_decision_marks_the_waiting_run_ready_and_the_drain_resumes_it_first(
    review_peer, inline_tasks, admin_user
):
    from bench.bench_e2e import approve_open

    decided = _waiting(inline_tasks, review_peer)
    assert approve_open(admin_user) == 1
    decided.refresh_from_db()
    assert decided.ready_at is not None
    # No resume task of its own: the drain of decided runs, on the priority queue.
    assert _sent(inline_tasks) == ["workflows.tasks.drain_resumes"]
    inline_tasks.sent.clear()
    started = start_run(workflow=review_peer, input={"item": "y"})
    order: list = []
    real = engine._drive

    def drive(run_id, token, first):
        order.append(run_id)
        return real(run_id, token, first)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_drive", drive)
        assert engine.drain_runs() == 2
    assert order == [decided.pk, started.pk]  # the person's decision before the start
    decided.refresh_from_db()
    assert decided.status == RunStatus.SUCCEEDED, decided.error
    assert decided.ready_at is None


def test_a_decision_between_the_steps_read_and_its_commit_is_not_lost(
    review_peer, inline_tasks, admin_user
):
    """The race that loses resumes: the waiting step read the action as escalated, a person
    decides, then the step commits its wait. The decision finds the run running (not ready
    to mark) and sends its resume; the step's commit re-reads the action under the run's
    lock and goes on at once."""
    import threading

    from django.db import connection

    from bench.bench_e2e import approve_open

    run = start_run(workflow=review_peer, input={"item": "x"})
    real = engine._commit
    decided: list[int] = []

    def commit(ctx, result, token, **kw):
        if ctx.step.name == "gate" and not decided:

            def decide() -> None:
                try:
                    decided.append(approve_open(admin_user))
                finally:
                    connection.close()

            t = threading.Thread(target=decide)
            t.start()
            t.join(10)
        return real(ctx, result, token, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_commit", commit)
        inline_tasks.drain()
    assert decided == [1]
    # It found the run running: nothing to send (the step's commit read it under the lock).
    assert "workflows.tasks.resume_run" not in [t for t, _ in inline_tasks.delivered]
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.trace.filter(message__startswith="waiting").count() == 1


def test_the_drain_a_decision_wakes_takes_decided_runs_only(review_peer, inline_tasks, admin_user):
    """It runs on the priority queue (the scale-out resumer serves nothing else): a start's
    steps must never hold it."""
    from bench.bench_e2e import approve_open

    decided = _waiting(inline_tasks, review_peer)
    assert approve_open(admin_user) == 1
    started = start_run(workflow=review_peer, input={"item": "y"})
    assert engine.drain_runs(starts=False) == 1
    decided.refresh_from_db()
    started.refresh_from_db()
    assert decided.status == RunStatus.SUCCEEDED, decided.error
    assert started.status == RunStatus.PENDING and started.lease_owner == ""
