"""The drain: pending runs are the start queue, claimed in batches by a drain woken once
(engine.drain_runs, outbox.wake_drain)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from workflows import engine, outbox
from workflows.actions import start_run
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)


def _drained(batch: int, *, starts: bool = True) -> list[str]:
    """Drain the two ready runs, at most `batch` at a time; the SQL of every statement sent."""
    with CaptureQueriesContext(connection) as queries:
        assert engine.drain_runs(starts=starts, max_batch=batch) == 2
    return [q["sql"] for q in queries.captured_queries]


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


def test_pending_runs_are_claimed_oldest_first_by_creation_not_by_last_write(agent, inline_tasks):
    from datetime import timedelta

    from django.utils import timezone

    older = start_run(workflow="fan_out", input={})
    newer = start_run(workflow="fan_out", input={})
    # Written to since (an admin's edit, a poke): its place in the queue stays its own.
    WorkflowRun.objects.filter(pk=older.pk).update(updated_at=timezone.now() + timedelta(hours=1))
    expires = timezone.now() + timedelta(minutes=5)
    assert engine._claim_ready("first", expires, [], 1) == [(older.pk, RunStatus.PENDING)]
    assert engine._claim_ready("second", expires, [], 1) == [(newer.pk, RunStatus.PENDING)]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_write_of_a_runs_lease_and_clock_rewrites_no_index(agent, inline_tasks):
    """What the engine writes most (lease, state, updated_at) is in no index: with room on
    the page (fillfactor), PostgreSQL updates the row HOT, with no index entry written."""
    from django.db import transaction
    from django.utils import timezone

    run = start_run(workflow="fan_out", input={})

    def hot_updates() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_stat_get_xact_tuples_hot_updated('workflows_workflowrun'::regclass)"
            )
            return int(cursor.fetchone()[0])

    with transaction.atomic():
        before = hot_updates()
        WorkflowRun.objects.filter(pk=run.pk).update(
            lease_owner="token", lease_expires_at=timezone.now(), updated_at=timezone.now()
        )
        assert hot_updates() == before + 1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE relname IN"
            " ('workflows_workflowrun', 'workflows_steprun')"
        )
        assert [r[0] for r in cursor.fetchall()] == [["fillfactor=70"]] * 2


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
    real = engine._claim_ready

    def claim(*args, **kw):
        claimed = real(*args, **kw)
        order.append([run_id for run_id, _ in claimed])
        return claimed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_claim_ready", claim)
        # Batches of one: which is claimed first shows.
        assert engine.drain_runs(max_batch=1) == 2
    # The person's decision before the start (which joins the batch once the decided run
    # has finished and left it).
    assert [ids for ids in order if ids][:2] == [[decided.pk], [started.pk]]
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


# --- group commit: one transaction per round for a whole batch -----------------------------


@pytest.fixture
def auto_peer(agent):
    from bench.peers.caliber_flow import ACTION_TYPE, AUTO
    from escalations.models import AutonomyPolicy
    from workflows.models import PolicyOutcome

    AutonomyPolicy.objects.create(
        name="peer", workflow=AUTO, action_type=ACTION_TYPE, outcome=PolicyOutcome.AUTO
    )
    return AUTO


def _commits(monkeypatch) -> list[int]:
    """Counts the transactions committed on this thread's connection."""
    from django.db import connections

    count = [0]
    wrapper = type(connections["default"])
    real = wrapper.commit

    def commit(self):
        count[0] += 1
        return real(self)

    monkeypatch.setattr(wrapper, "commit", commit)
    return count


@pytest.mark.parametrize("batch", [1, 2])
def test_a_batch_of_runs_commits_once_per_round_not_once_per_run(
    auto_peer, inline_tasks, monkeypatch, batch
):
    """Two runs of three steps: a round to claim, then one per step — one transaction per
    round for the pair (4), where runs driven one at a time commit 4 each (8)."""
    from workflows.models import Effect, TraceEvent

    runs = [start_run(workflow=auto_peer, input={"item": f"i-{i}"}) for i in range(2)]
    commits = _commits(monkeypatch)
    statements = _drained(batch)
    assert commits[0] == 8 // batch
    # Together, the runs and their steps are locked and read once per round for both.
    steps_read = [q for q in statements if "FROM workflows_steprun s WHERE s.run_id = " in q]
    together = [q for q in steps_read if "s.run_id = ANY(" in q]
    one_by_one = [q for q in steps_read if q not in together]
    assert (len(one_by_one), len(together)) == ((8, 0) if batch == 1 else (0, 4))
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.lease_owner == ""
    assert Effect.objects.count() == 2
    # The same trace for each, whether the runs went together or not.
    traces = [sorted(TraceEvent.objects.filter(run=r).values_list("kind", "message")) for r in runs]
    assert traces[0] == traces[1] and traces[0]


def test_a_run_that_fails_is_set_aside_and_never_fails_its_batch_mates(
    auto_peer, inline_tasks, caplog
):
    """The crashing run's step raises inside the batch's round: the round rolls back and is
    redone without it, and it goes on alone (its failed attempt recorded once); its
    batch-mates' effects happen once, their traces hold nothing twice."""
    from workflows.models import Effect, StepRun, TraceEvent

    first = start_run(workflow=auto_peer, input={"item": "a"})
    crashing = start_run(workflow="always_crashes", input={})
    last = start_run(workflow=auto_peer, input={"item": "b"})
    alone = start_run(workflow=auto_peer, input={"item": "c"})
    inline_tasks.sent.clear()
    with caplog.at_level("INFO", logger="workflows.engine"):
        assert engine.drain_runs(max_batch=3) == 4
    assert f"run {crashing.pk} set aside from its batch" in caplog.text
    for run in (first, last, alone):
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
    assert Effect.objects.count() == 3
    lone = sorted(TraceEvent.objects.filter(run=alone).values_list("kind", "message"))
    for run in (first, last):
        assert sorted(TraceEvent.objects.filter(run=run).values_list("kind", "message")) == lone
    boom = StepRun.objects.get(run=crashing)
    assert boom.attempts == 1 and boom.status == "pending", boom.error
    failed = TraceEvent.objects.filter(run=crashing, message__startswith="attempt 1/2 failed")
    assert failed.count() == 1
    crashing.refresh_from_db()
    assert crashing.lease_owner == ""
    # Its retry comes as a task of its own, and fails it for good.
    inline_tasks.drain()
    crashing.refresh_from_db()
    assert crashing.status == RunStatus.FAILED


@pytest.mark.parametrize("batch", [1, 2])
def test_decided_runs_resumed_together_read_what_they_waited_for_at_once(
    review_peer, inline_tasks, admin_user, batch
):
    """The actions two resumed runs waited for (and whether the ledger holds their effect)
    are read in one statement for the round, under the runs' locks, not one per run."""
    from bench.bench_e2e import approve_open
    from workflows.models import Effect

    runs = [start_run(workflow=review_peer, input={"item": f"i-{i}"}) for i in range(2)]
    inline_tasks.drain()
    assert approve_open(admin_user) == 2
    inline_tasks.sent.clear()
    statements = _drained(batch, starts=False)
    awaited = [q for q in statements if "WHERE a.id = ANY(" in q]
    assert len(awaited) == (2 if batch == 1 else 1)
    # So are their state chains, which each resume's recovery check verifies.
    chains = [q for q in statements if "FROM workflows_runsnapshot" in q]
    together = [q for q in chains if "s.run_id = ANY(" in q]
    assert (len(chains) - len(together), len(together)) == ((2, 0) if batch == 1 else (0, 1))
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        check = run.trace.get(kind="recovery")
        assert check.data["ok"] and check.data["checks"][0].startswith("state chain intact")
    assert Effect.objects.count() == 2


@pytest.mark.parametrize("batch", [1, 2])
def test_a_run_ends_as_the_output_committed_with_its_end_says(agent, inline_tasks, batch):
    """In a group round a step's output is written with the run's state, after the round
    that ends the run: the outcome still judges by it."""
    from workflows.models import StepRun

    good = start_run(workflow="judged", input={"ok": True})
    bad = start_run(workflow="judged", input={"ok": False})
    assert engine.drain_runs(max_batch=batch) == 2
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == RunStatus.SUCCEEDED, good.error
    assert (bad.status, bad.error) == (RunStatus.HANDED_OFF, "the verdict said no")
    verdict = StepRun.objects.get(run=bad, name="verdict")
    assert (verdict.status, verdict.output, verdict.lease_owner) == ("succeeded", {"ok": False}, "")
    assert verdict.finished_at is not None


def test_in_a_group_only_what_a_step_writes_through_its_state_view_is_committed(
    agent, inline_tasks
):
    """The commit takes the run from what the round locked, not the objects the step saw."""
    from workflows.state import verify_chain

    runs = [start_run(workflow="scribbler", input={}) for _ in range(2)]
    assert engine.drain_runs(max_batch=2) == 2
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.state["workspace"]["written"] is True
        assert "scribbled" not in run.state["workspace"]
        assert run.state["workspace"]["outputs"]["look"] == {"saw_scribble": False}
        assert verify_chain(run) == []


def test_in_a_group_a_step_past_its_lease_cannot_commit(auto_peer, inline_tasks, caplog):
    """The lease is checked on the step row the round locked: a step that outlived it is set
    aside and goes alone, where the fence refuses it again; its batch-mate is not held up."""
    from workflows.models import StepRun

    slow = start_run(workflow="too_slow", input={"sleep": 0.8})
    quick = start_run(workflow=auto_peer, input={"item": "q"})
    with caplog.at_level("INFO", logger="workflows.engine"):
        assert engine.drain_runs(max_batch=2) == 2
    assert f"run {slow.pk} set aside from its batch" in caplog.text
    quick.refresh_from_db()
    assert quick.status == RunStatus.SUCCEEDED, quick.error
    step = StepRun.objects.get(run=slow)
    # Its retry falls due 0.1 s after the refusal: on a loaded machine the run's next round
    # comes later than that and takes it in the same drain, to be refused the same way.
    assert step.output is None and step.attempts in (1, 2)
    assert "timed out after 0.5s (lease expired)" in step.error


def test_a_resume_in_a_group_still_refuses_a_forged_state(review_peer, inline_tasks, admin_user):
    """The chains a group round reads for its resumes are checked as each run's own read:
    the forged one is held for a person, its batch-mate goes on."""
    from bench.bench_e2e import approve_open
    from workflows.models import Effect, RunSnapshot

    forged, fine = (start_run(workflow=review_peer, input={"item": f"i-{i}"}) for i in range(2))
    inline_tasks.drain()
    assert approve_open(admin_user) == 2
    RunSnapshot.objects.filter(run=forged, version=2).update(workspace={"forged": True})
    assert engine.drain_runs(starts=False, max_batch=2) == 2
    forged.refresh_from_db()
    fine.refresh_from_db()
    assert fine.status == RunStatus.SUCCEEDED, fine.error
    assert "v2 was altered after it was written" in forged.attention
    assert not Effect.objects.filter(run=forged).exists()


def test_a_step_reads_only_its_own_runs_actions(auto_peer, inline_tasks):
    """`ctx.action` (what the peer flow's gate and execute read) is the run's own action as
    it is now, and refuses another run's."""
    from workflows.models import Action, StepRun
    from workflows.step_context import StepContext

    mine, other = (start_run(workflow=auto_peer, input={"item": i}) for i in "ab")
    inline_tasks.drain()
    action = Action.objects.get(run=mine)
    Action.objects.filter(pk=action.pk).update(rationale="changed since")
    step = StepRun.objects.get(run=mine, name="execute")
    ctx = StepContext(run=mine, step=step, model=None, state=None)
    read = ctx.action(str(action.pk))
    assert (read.pk, read.status, read.rationale) == (action.pk, "executed", "changed since")
    assert read.run is mine
    with pytest.raises(Action.DoesNotExist):
        ctx.action(Action.objects.get(run=other).pk)


def test_a_run_started_while_a_batch_runs_joins_it_at_its_next_round(auto_peer, inline_tasks):
    """Continuous batching: what becomes ready while a drain's batch is in its rounds joins
    the batch (its wake-up flag is up), rather than wait for the batch to end or for another
    worker; with no flag up nothing is looked for."""
    first = start_run(workflow=auto_peer, input={"item": "first"})
    inline_tasks.sent.clear()
    drives, joined = [], []
    real_drive, real_round = engine._drive_batch, engine._group_round

    def drive(items, token, **kw):
        drives.append(list(items))
        return real_drive(items, token, **kw)

    def group_round(items, token, **kw):
        if not joined:
            joined.append(start_run(workflow=auto_peer, input={"item": "joined"}))
        else:
            assert joined[0].pk in items  # in the batch from its second round on
        return real_round(items, token, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "_drive_batch", drive)
        mp.setattr(engine, "_group_round", group_round)
        assert engine.drain_runs() == 2
    assert drives == [[first.pk]]
    for run in (first, joined[0]):
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
    # Its wake-up was sent all the same (never lost); the drain it starts finds nothing.
    assert _sent(inline_tasks) == [DRAIN]
    assert engine.drain_runs() == 0


@pytest.mark.parametrize("batch", [1, 2])
def test_a_worker_that_did_not_write_a_runs_last_state_does_not_read_its_digest_apart(
    auto_peer, inline_tasks, batch
):
    """The parent of the next snapshot comes with the run's locked row: a worker other than
    the one that wrote the state (here: a forgotten cache) reads no snapshot for it."""
    from workflows import state
    from workflows.state import verify_chain

    runs = [start_run(workflow=auto_peer, input={"item": f"i-{i}"}) for i in range(2)]
    state._DIGESTS.clear()
    read = [q for q in _drained(batch) if '"workflows_runsnapshot"."digest"' in q]
    assert read == []
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert verify_chain(run) == []


def test_in_a_group_a_wait_over_at_once_is_written_before_its_step_runs_again(agent, inline_tasks):
    """A sleep already due when it commits: the round that follows claims the same step
    again, so its wait is written on its own first, not with the claim (one row)."""
    from workflows.models import StepRun

    runs = [start_run(workflow="sleeper", input={"seconds": 0}) for _ in range(2)]
    assert engine.drain_runs(max_batch=2) == 2
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        nap = StepRun.objects.get(run=run, name="nap")
        assert (nap.status, nap.output, nap.waiting_for, nap.lease_owner) == (
            "succeeded",
            {"woke": True},
            None,
            "",
        )
        assert run.trace.filter(message__startswith="sleeping until").count() == 1


def test_in_a_group_a_wait_whose_round_ends_the_run_is_cancelled_with_it(
    review_peer, inline_tasks, monkeypatch
):
    """The round after a step's wait fails the run (here: its deadline): the step's wait,
    written after that round, is written cancelled, as the run's other waiting steps are."""
    from workflows.ending import fail_locked
    from workflows.models import StepRun

    doomed, fine = (start_run(workflow=review_peer, input={"item": i}) for i in "ab")
    real = engine._may_go_on

    def may_go_on(run, now, acquired):
        batch = engine._BATCH.get()
        steps = batch.steps.get(run.pk, []) if batch is not None else []
        if run.pk == doomed.pk and any(s.name == "gate" and s.status == "waiting" for s in steps):
            fail_locked(run, "run timed out (deadline)")
            return False
        return real(run, now, acquired)

    monkeypatch.setattr(engine, "_may_go_on", may_go_on)
    assert engine.drain_runs(max_batch=2) == 2
    doomed.refresh_from_db()
    fine.refresh_from_db()
    assert (doomed.status, doomed.error) == (RunStatus.FAILED, "run timed out (deadline)")
    gate = StepRun.objects.get(run=doomed, name="gate")
    assert (gate.status, gate.lease_owner) == ("cancelled", "")
    assert gate.waiting_for["actions"]
    assert fine.status == RunStatus.WAITING
    assert StepRun.objects.get(run=fine, name="gate").status == "waiting"


@pytest.mark.parametrize("batch", [1, 2])
def test_in_a_group_what_a_step_read_and_waits_for_is_not_read_again(
    review_peer, inline_tasks, admin_user, batch
):
    """The gate read its action (`ctx.action`) and waits for it: the round that follows, in
    the same transaction and under the same lock, takes that read rather than its own."""
    from bench.bench_e2e import approve_open

    runs = [start_run(workflow=review_peer, input={"item": f"i-{i}"}) for i in range(2)]
    inline_tasks.sent.clear()
    awaited = [q for q in _drained(batch) if "WHERE a.id = ANY(" in q]
    assert len(awaited) == (2 if batch == 1 else 0)
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING, run.error
    assert approve_open(admin_user) == 2
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error


@pytest.mark.parametrize("batch", [1, 2])
def test_in_a_group_the_ledger_read_with_the_action_is_the_one_execution_asks(
    auto_peer, inline_tasks, monkeypatch, batch
):
    """Under a group round's lock, what `ctx.action` read of the ledger is what executing the
    action takes (no second read); an effect it found recorded is not applied again."""
    import dataclasses

    from bench.peers.caliber_flow import ACTION_TYPE
    from workflows.models import Action, Effect, StepRun
    from workflows.tools import ACTION_TYPES

    applied: list[str] = []
    real = ACTION_TYPES[ACTION_TYPE]

    def counted(payload, key):
        applied.append(key)
        return real.execute(payload, key)

    monkeypatch.setitem(ACTION_TYPES, ACTION_TYPE, dataclasses.replace(real, execute=counted))
    runs = [start_run(workflow=auto_peer, input={"item": f"i-{i}"}) for i in range(2)]
    recorded_for = runs[0]
    real_round = engine._group_round

    def group_round(items, token, **kw):
        # Once the first run's execute is claimed, its effect is found in the ledger (as if
        # applied by an attempt that died after its commit).
        claimed = StepRun.objects.filter(run=recorded_for, name="execute", status="running")
        action = Action.objects.filter(run=recorded_for).first()
        if claimed.exists() and action and not Effect.objects.filter(action=action).exists():
            Effect.objects.create(
                key=action.idempotency_key,
                action=action,
                run=recorded_for,
                step_name="execute",
                result={"done": "earlier"},
            )
        return real_round(items, token, **kw)

    monkeypatch.setattr(engine, "_group_round", group_round)
    asked = [q for q in _drained(batch) if "FROM workflows_effect WHERE key" in q]
    assert len(asked) == (2 if batch == 1 else 0)
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
    assert len(applied) == 1  # the second run's only
    assert Action.objects.get(run=recorded_for).result == {"done": "earlier"}
