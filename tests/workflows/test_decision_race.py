"""A decision and the engine's rounds of its run meet on the run's row: the decision locks
it first (before the escalation's and the action's), a round locks it and then reads the
awaited actions afresh. Whichever commits second sees the other, so no resume is lost —
the race a prototype lost 11 resumes in 90 to, until both took the run's row first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from bench.bench_e2e import approve_open
from escalations.actions import decide_escalation
from escalations.models import Escalation, EscalationStatus, Verdict, Via
from tests.conftest import wait_for
from workflows import engine
from workflows.actions import start_run
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

RESUME = "workflows.tasks.resume_run"


@pytest.fixture
def review_peer(agent):
    from bench.peers.caliber_flow import ACTION_TYPE, APPROVAL
    from escalations.models import AutonomyPolicy
    from workflows.models import PolicyOutcome

    AutonomyPolicy.objects.create(
        name="peer", workflow=APPROVAL, action_type=ACTION_TYPE, outcome=PolicyOutcome.REVIEW
    )
    return APPROVAL


def _waiting(inline_tasks: Any, workflow: str, n: int = 1) -> list[WorkflowRun]:
    runs = [start_run(workflow=workflow, input={"item": f"x{i}"}) for i in range(n)]
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING
    inline_tasks.sent.clear()
    return runs


def _blocked_on_a_row_lock() -> bool:
    """Another backend waits for a row lock (the decision, on the run's row)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        return bool(cur.fetchone()[0])


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # reported by the test's assertions
            out.append(exc)
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _decide(user: Any) -> Callable[[], int]:
    return lambda: approve_open(user)


def test_a_decision_waits_for_the_run_someone_holds_then_marks_it_ready(
    review_peer, inline_tasks, admin_user
):
    """No resume task when the row is held (a coordinator committing, a cancel): the
    decision waits its turn on the row, then marks the run, still waiting, ready."""
    from django.db import transaction

    [run] = _waiting(inline_tasks, review_peer)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            WorkflowRun.objects.select_for_update(no_key=True).get(pk=run.pk)
            held.set()
            release.wait(20)

    holder, _ = _in_thread(hold)
    try:
        assert held.wait(20)
        decider, decided = _in_thread(_decide(admin_user))
        wait_for(_blocked_on_a_row_lock)
        assert decided == []  # it waits for the row
    finally:
        release.set()
        holder.join(20)
    decider.join(20)
    assert decided == [1]
    run.refresh_from_db()
    assert run.ready_at is not None
    assert [t for _, t, _ in inline_tasks.sent] == ["workflows.tasks.drain_resumes"]
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert RESUME not in [t for t, _ in inline_tasks.delivered]


def test_a_decision_committing_during_the_drains_round_for_its_run_is_not_lost(
    review_peer, inline_tasks, admin_user
):
    """The round has locked the run and read the action still escalated; the decision
    comes now. It waits for the round's commit (the run left waiting, its lease let go),
    then finds the run waiting and marks it ready: the next drain resumes it."""
    [run] = _waiting(inline_tasks, review_peer)
    # A drain claims it while its action is still with the person (a stale mark, a hand-back).
    WorkflowRun.objects.filter(pk=run.pk).update(ready_at=run.updated_at)
    real = engine._awaited_actions
    decisions: list[tuple[threading.Thread, list[Any]]] = []

    def awaited(steps):
        read = real(steps)
        if not decisions and read:
            assert {a.status for a in read.values()} == {"escalated"}
            decisions.append(_in_thread(_decide(admin_user)))
            wait_for(_blocked_on_a_row_lock)  # on the run's row, this round holds it
        return read

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_awaited_actions", awaited)
        assert engine.drain_runs(starts=False) == 1
    [(decider, decided)] = decisions
    decider.join(20)
    assert decided == [1]
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING and run.lease_owner == ""
    assert run.ready_at is not None  # marked after the round let go: claimable
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert RESUME not in [t for t, _ in inline_tasks.delivered]


def test_a_decision_committing_between_the_drains_claim_and_its_round_is_read_there(
    review_peer, inline_tasks, admin_user
):
    """The drain's claim (its own statement) took the lease; before its round locks the
    run, the decision commits. The round reads the action under the lock: decided, so it
    resumes the run in this very round."""
    [run] = _waiting(inline_tasks, review_peer)
    WorkflowRun.objects.filter(pk=run.pk).update(ready_at=run.updated_at)
    real = engine._lock_run
    decided: list[Any] = []

    def lock_run(run_id):
        if not decided:
            decider, out = _in_thread(_decide(admin_user))
            decider.join(20)
            decided.extend(out)
        return real(run_id)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_lock_run", lock_run)
        assert engine.drain_runs(starts=False) == 1
    assert decided == [1]
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error


def test_decisions_racing_a_busy_drain_lose_no_resume(review_peer, inline_tasks, admin_user):
    """Many runs, decided from threads while drains run (and marks go stale) in this one:
    every run resumes and succeeds, none through a resume task."""
    runs = _waiting(inline_tasks, review_peer, n=12)
    ids = list(Escalation.objects.filter(status=EscalationStatus.OPEN).values_list("pk", flat=True))
    assert len(ids) == len(runs)
    # Every run claimable now, with its action still escalated: the drain's rounds and the
    # decisions interleave.
    WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).update(ready_at=runs[0].updated_at)

    def decide_all(chunk: list[Any]) -> Callable[[], int]:
        def go() -> int:
            for pk in chunk:
                decide_escalation(
                    escalation_id=pk, user=admin_user, verdict=Verdict.APPROVE, via=Via.API
                )
            return len(chunk)

        return go

    deciders = [_in_thread(decide_all(ids[i::3])) for i in range(3)]
    while any(t.is_alive() for t, _ in deciders):
        engine.drain_runs(max_batch=4)
    for t, out in deciders:
        t.join(20)
        assert out and isinstance(out[0], int), out
    inline_tasks.drain()
    engine.drain_runs()
    statuses = {r.pk: r.status for r in WorkflowRun.objects.filter(pk__in=[r.pk for r in runs])}
    assert set(statuses.values()) == {RunStatus.SUCCEEDED}, statuses
    assert RESUME not in [t for t, _ in inline_tasks.delivered]
