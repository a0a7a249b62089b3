"""The decomposition layer and hybrid execution: plans, fan-out and join, retries, timeouts,
success criteria, cancellation, wake-ups."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import wait_for_run
from workflows import engine
from workflows.actions import InvalidTransition, cancel_run, cancel_step, start_run
from workflows.models import (
    DeadLetter,
    Effect,
    RunSnapshot,
    RunStatus,
    StepRun,
    StepStatus,
    TraceKind,
    WorkflowRun,
)
from workflows.specs import (
    InvalidPlan,
    Mode,
    StepSpec,
    WorkflowSpec,
    check_dag,
    get_spec,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _time_passes(run: WorkflowRun, step_name: str) -> None:
    """The step's sleep ran out, as far as the database timer is concerned: its deadline and
    the run's wake-up time (the earliest of its sleeps') are now in the past."""
    past = timezone.now() - timedelta(seconds=1)
    step = StepRun.objects.get(run=run, name=step_name)
    step.waiting_for = {**(step.waiting_for or {}), "until": past.isoformat()}
    step.save(update_fields=["waiting_for"])
    WorkflowRun.objects.filter(pk=run.pk).update(wake_at=past)


def _noop(ctx):
    return {}


def test_a_cycle_an_unknown_dependency_and_a_duplicate_name_are_refused():
    a = StepSpec("a", "A", _noop, depends_on=("b",))
    b = StepSpec("b", "B", _noop, depends_on=("a",))
    with pytest.raises(InvalidPlan, match="cycle"):
        WorkflowSpec(name="x", version=1, title="x", agent="x", steps=(a, b))
    with pytest.raises(InvalidPlan, match="unknown"):
        WorkflowSpec(
            name="x",
            version=1,
            title="x",
            agent="x",
            steps=(StepSpec("a", "A", _noop, depends_on=("nope",)),),
        )
    with pytest.raises(InvalidPlan, match="duplicate"):
        check_dag([a.planned(), a.planned()])
    with pytest.raises(ValueError, match="mode"):
        StepSpec("a", "A", _noop, mode="sometimes")


def test_the_plan_is_stored_on_the_run_before_any_step_executes(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    run.refresh_from_db()
    assert [p["name"] for p in run.plan] == [
        "start",
        "gather_a",
        "gather_b",
        "gather_c",
        "join",
        "finish",
    ]
    assert run.plan[4]["depends_on"] == ["gather_a", "gather_b", "gather_c"]
    assert [p["mode"] for p in run.plan[1:4]] == ["async"] * 3
    assert set(StepRun.objects.filter(run=run).values_list("status", flat=True)) == {"pending"}
    assert run.state_version == 1 and RunSnapshot.objects.filter(run=run).count() == 1
    assert run.trace.filter(message__contains="planned: 6 steps (3 in parallel)").exists()
    assert run.plan_levels()[1] == run.plan[1:4]


def test_parallel_async_steps_fan_out_as_tasks_and_join_exactly_once(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    run_steps = [a for t, a in inline_tasks.delivered if t == "workflows.tasks.run_step"]
    assert sorted(a[1] for a in run_steps) == ["gather_a", "gather_b", "gather_c"]
    join = StepRun.objects.get(run=run, name="join")
    assert join.attempts == 1
    assert join.output["joined"] == ["gather_a", "gather_b", "gather_c"]
    assert run.trace.filter(message__startswith="joined 3 results").count() == 1
    assert Effect.objects.filter(run=run).count() == 4
    # Three concurrent-looking writers to the workspace, none lost.
    assert sorted(run.state["workspace"]["gathered"]) == ["gather_a", "gather_b", "gather_c"]
    assert run.state["systemic"]["rate_limits"]["test_api"]["per_minute"] == 60
    versions = list(
        RunSnapshot.objects.filter(run=run).order_by("version").values_list("version", flat=True)
    )
    assert versions == list(range(1, run.state_version + 1))


def test_the_last_sibling_to_finish_runs_the_join_without_another_task(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [t for t, _ in inline_tasks.delivered] == [
        "workflows.tasks.drain_runs",
        "workflows.tasks.run_step",
        "workflows.tasks.run_step",
        "workflows.tasks.run_step",
    ]
    assert StepRun.objects.get(run=run, name="join").attempts == 1
    assert not run.trace.filter(kind=TraceKind.ERROR).exists()


def test_the_same_workflow_runs_with_every_step_inline_when_forced_sync(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={}, force_sync=True)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert {p["mode"] for p in run.plan} == {Mode.SYNC}
    assert not [t for t, _ in inline_tasks.delivered if t == "workflows.tasks.run_step"]
    assert StepRun.objects.get(run=run, name="join").output["joined"] == [
        "gather_a",
        "gather_b",
        "gather_c",
    ]


def test_a_long_plan_is_handed_to_a_fresh_task_without_leaving_a_step_claimed(
    agent, inline_tasks, monkeypatch
):
    monkeypatch.setattr(engine, "MAX_ROUNDS_PER_TASK", 2)
    run = start_run(workflow="fan_out", input={}, force_sync=True)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    advances = [t for t, _ in inline_tasks.delivered if t == "workflows.tasks.advance_run"]
    assert len(advances) > 1
    assert StepRun.objects.filter(run=run).exclude(attempts=1).count() == 0
    assert not run.trace.filter(kind=TraceKind.ERROR).exists()


def test_a_step_delivered_twice_in_a_row_is_a_logged_no_op(agent, inline_tasks, caplog):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.deliver(*inline_tasks.sent.pop(0)[1:])  # start, then dispatch the fan-out
    engine.run_step(run_id=run.pk, step_name="gather_a")
    effects = Effect.objects.filter(run=run).count()
    engine.run_step(run_id=run.pk, step_name="gather_a")
    assert "gather_a delivered again while succeeded; no-op" in caplog.text
    assert Effect.objects.filter(run=run).count() == effects == 1
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    trace = run.trace.count()
    for name in ("gather_b", "join"):
        engine.run_step(run_id=run.pk, step_name=name)
    engine.advance_run(run_id=run.pk)
    assert Effect.objects.filter(run=run).count() == 4
    assert run.trace.count() == trace
    assert StepRun.objects.get(run=run, name="gather_a").attempts == 1


def test_an_attempt_whose_effect_is_recorded_does_not_apply_it_again(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    # As if a previous attempt's effect had been recorded (and the attempt then lost).
    Effect.objects.create(
        key=f"{run.pk}:gather_b:gathered",
        run=run,
        step_name="gather_b",
        result={"charged": "gathered", "idempotency_key": "earlier"},
    )
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert Effect.objects.filter(key=f"{run.pk}:gather_b:gathered").count() == 1
    assert run.trace.filter(
        kind=TraceKind.SKIPPED, step_name="gather_b", message__contains="already applied"
    ).exists()


def test_a_failing_step_is_retried_with_backoff_then_dead_lettered(agent, inline_tasks):
    run = start_run(workflow="always_crashes", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "the tool is down" in run.error
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts) == (StepStatus.FAILED, 2)
    letter = DeadLetter.objects.get(run=run)
    assert (letter.step_name, letter.attempts) == ("boom", 2)
    messages = list(run.trace.filter(kind=TraceKind.ERROR).values_list("message", flat=True))
    assert any("attempt 1/2 failed" in m and "retrying in 0.2s" in m for m in messages)
    assert any("dead-lettered after 2 attempt(s)" in m for m in messages)


def test_a_step_that_returns_after_its_timeout_cannot_commit(agent, inline_tasks):
    # In this process pytest-timeout owns SIGALRM, so nothing interrupts the step: the lease
    # fence is what refuses its late result.
    run = start_run(workflow="too_slow", input={"sleep": 0.8})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "timed out after 0.5s (lease expired)" in run.error
    assert StepRun.objects.get(run=run).output is None
    assert DeadLetter.objects.filter(run=run, attempts=2).exists()


def test_a_worker_interrupts_a_step_at_its_timeout(celery_worker, agent):
    run = start_run(workflow="too_slow", input={"sleep": 30})
    wait_for_run(run, RunStatus.FAILED, timeout=20)
    # Interrupted by the alarm, not refused later by the fence.
    assert run.error.endswith("StepTimedOut: timed out after 0.5s")
    assert run.trace.filter(message__contains="attempt 1/2 failed").exists()


def test_a_run_past_its_deadline_fails_with_the_reason(agent, inline_tasks):
    run = start_run(workflow="too_slow", input={"sleep": 0})
    WorkflowRun.objects.filter(pk=run.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "run timed out" in run.error
    assert not StepRun.objects.filter(run=run, status=StepStatus.SUCCEEDED).exists()


def test_an_output_that_misses_its_success_criterion_fails_the_attempt(agent, inline_tasks):
    spec = get_spec("fan_out")
    join = spec.step("join")
    assert join.success({"joined": ["a"]}) == "missing results"
    assert join.success({"joined": ["a", "b", "c"]}) is None


def test_a_cancelled_run_stops_and_its_running_step_cannot_commit(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    # Dispatch the fan-out but do not run it yet.
    inline_tasks.deliver(*inline_tasks.sent.pop(0)[1:])
    assert StepRun.objects.filter(run=run, status=StepStatus.QUEUED).count() == 3
    cancel_run(run_id=run.pk, actor="root", reason="customer withdrew")
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert not StepRun.objects.filter(run=run, status=StepStatus.SUCCEEDED, name="join").exists()
    assert not Effect.objects.filter(run=run).exists()
    assert run.trace.filter(kind=TraceKind.AUDIT, actor="root").exists()
    with pytest.raises(InvalidTransition):
        cancel_run(run_id=run.pk, actor="root", reason="again")


def test_cancelling_an_async_step_lets_the_run_go_on_without_it(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.deliver(*inline_tasks.sent.pop(0)[1:])
    cancel_step(run_id=run.pk, step_name="gather_b", actor="root", reason="source is down")
    with pytest.raises(InvalidTransition, match="critical path"):
        cancel_step(run_id=run.pk, step_name="join", actor="root", reason="no")
    inline_tasks.drain()
    run.refresh_from_db()
    # join's criterion wants all three: without gather_b it fails, visibly.
    assert run.status == RunStatus.FAILED
    assert "missing results" in run.error
    assert StepRun.objects.get(run=run, name="gather_b").status == StepStatus.CANCELLED


def test_a_step_can_sleep_and_is_woken_by_the_database_timer(agent, inline_tasks):
    run = start_run(workflow="sleeper", input={"seconds": 3600})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    assert run.wake_at is not None and run.wake_at > timezone.now() + timedelta(minutes=59)
    assert engine.wake_runs() == 0  # not due yet
    _time_passes(run, "nap")
    assert engine.wake_runs() == 1
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.wake_at is None
    check = run.trace.get(kind=TraceKind.RECOVERY)
    assert "after a wake-up: passed" in check.message


def test_only_the_sleep_whose_time_came_wakes(agent, inline_tasks):
    run = start_run(workflow="two_sleeps", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    long_nap = StepRun.objects.get(run=run, name="long_nap")
    day_later = long_nap.waiting_for["until"]
    # The minute is up; the day is not.
    _time_passes(run, "short_nap")
    assert engine.wake_runs() == 1
    inline_tasks.drain()
    run.refresh_from_db()
    long_nap.refresh_from_db()
    assert StepRun.objects.get(run=run, name="short_nap").status == StepStatus.SUCCEEDED
    assert long_nap.status == StepStatus.WAITING
    assert long_nap.waiting_for["until"] == day_later
    assert run.status == RunStatus.WAITING
    assert run.wake_at is not None and run.wake_at > timezone.now() + timedelta(hours=23)
    assert engine.wake_runs() == 0


def test_the_parallel_fan_out_joins_exactly_once_through_a_real_worker(celery_worker, agent):
    runs = [start_run(workflow="fan_out", input={}) for _ in range(5)]
    for run in runs:
        wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
        join = StepRun.objects.get(run=run, name="join")
        assert join.attempts == 1
        assert run.trace.filter(message__startswith="joined 3 results").count() == 1
        assert Effect.objects.filter(run=run).count() == 4
