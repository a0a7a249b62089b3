"""A person's decision jumps the queue: decision-to-resume under a backlog of ready runs.

Triage runs wait with their replies escalated; then 1,000 one-step runs are started (each
step stands in for a model call: 50 ms) while no worker runs, and the workers start on them:
more than two children clear in minutes. The started runs are the engine's ready queue (each
run's row is its wake-up: one drain message for all of them, no message per run). While that
backlog is deep, the bench process approves the waiting replies one by one, through the same
decide action the browser uses. A decision marks its run ready in the deciding transaction
and wakes a drain of decided runs on the priority queue (`workflows.tasks.drain_resumes`),
which every worker consumes first; a backlog drain between batches also claims decided runs
before starts. Decision-to-resume is the run's "run resumed" trace event minus its
decision's `created_at` (both database timestamps). Decision-to-sent goes on to the reply's
`executed_at`. The undo window is set to 0 here: it is a deliberate wait, not latency. The
notes say how deep the backlog was at each decision and how many of the resumes the
priority drains coordinated (from the workers' logs).

Two layouts, each on a fresh database: as deployed (config/supervisord.conf: beside the
workers, a resumer — one pool child serving only the priority queue), the target's figure;
then every worker on both queues and none kept for decisions (`_no_resumer`: the tests'
and the other benches' layout), where a decision's drain waits for a child that a backlog
drain holds (up to engine.DRAIN_SECONDS) unless that drain's next claim takes it first.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from workflows.specs import StepSpec, WorkflowSpec, get_spec, register

if TYPE_CHECKING:
    from bench.harness import BenchEnv, Result
    from workflows.engine import StepContext

BACKLOG = "bench_backlog"
STEP_SECONDS = 0.05


def _busy(ctx: StepContext) -> dict[str, Any]:
    time.sleep(STEP_SECONDS)  # a model call's worth of waiting
    return {"done": True}


def _register() -> None:
    try:
        get_spec(BACKLOG)
    except LookupError:
        register(
            WorkflowSpec(
                name=BACKLOG,
                version=1,
                title="Benchmark backlog step",
                agent="triage-agent",
                steps=(StepSpec("busy", "A step that takes a while", _busy),),
            )
        )


_register()


def _backlog_left() -> int:
    """The backlog's runs not finished yet: the ready queue ahead of (or beside) a decision.
    (Not the Celery queue's length: a started run sends no message of its own.)"""
    from workflows.models import TERMINAL_RUN_STATUSES, WorkflowRun

    backlog = WorkflowRun.objects.filter(workflow=BACKLOG)
    return backlog.exclude(status__in=TERMINAL_RUN_STATUSES).count()


_SUCCEEDED = re.compile(
    rb"Task workflows\.tasks\.drain_resumes\[[^\]]+\] succeeded in [^:]+: (\d+)"
)


def _priority_drains(env: BenchEnv) -> tuple[int, int]:
    """(drain_resumes tasks that ran, runs they coordinated), from the workers' INFO logs."""
    tasks = runs = 0
    for log in env.log_dir.glob("worker-*.log"):
        for match in _SUCCEEDED.finditer(log.read_bytes()):
            tasks += 1
            runs += int(match.group(1))
    return tasks, runs


@contextlib.contextmanager
def _resumer(env: BenchEnv, on: bool) -> Iterator[None]:
    """Production's resumer (config/supervisord.conf, program:resumer): one more worker, one
    pool child, serving only the priority queue, so what follows a decision never waits for
    a child busy with a backlog drain. (tests.support.processes.start_worker consumes
    `<queue>-priority,<queue>,<queue>-model`: given the priority queue as its queue, the
    second is the priority queue, the others ones nobody sends to.)"""
    if not on:
        yield
        return
    from tests.support import processes

    proc = processes.start_worker(
        env=dict(os.environ, CELERY_LOG_LEVEL="INFO"),
        log_path=env.log_dir / "worker-resumer.log",
        queue=os.environ["CELERY_QUEUE"] + "-priority",
        concurrency=1,
        name="resumer@%h",
        timeout=60,
    )
    try:
        yield
    finally:
        proc.terminate()
        processes.stop(proc)


def _phase(env: BenchEnv, *, resumer: bool) -> dict[str, Any]:
    """One layout: triage runs waiting, the backlog started, then the decisions."""
    from django.conf import settings

    from bench.bench_e2e import WORKFLOW, _start
    from escalations.actions import decide_escalation
    from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
    from workflows.actions import start_run
    from workflows.models import Action, ActionStatus, RunStatus, TraceEvent, WorkflowRun

    n_waiting = env.scale(20, 3)
    n_backlog = env.scale(1000, 30)
    data = env.reset()
    for log in env.log_dir.glob("worker-*.log"):
        log.unlink()
    latencies: list[float] = []
    sent: list[float] = []
    depths: list[int] = []
    not_waiting = 0
    triage = WorkflowRun.objects.filter(workflow=WORKFLOW)
    with env.workers():
        _start(n_waiting, seed=11)
        # Every triage run waiting for its person (not only its escalation open: a run still
        # being coordinated when the decision comes goes on in that round, no resume), and
        # nothing else of theirs left to do while the workers are gone.
        env.wait_until(
            lambda: (
                Escalation.objects.filter(status=EscalationStatus.OPEN).count() >= n_waiting
                and not triage.filter(status__in=(RunStatus.PENDING, RunStatus.RUNNING)).exists()
                and not triage.exclude(lease_owner="").exists()
            )
        )
    # The backlog is queued while no worker runs (creating runs here is slower than two
    # children clear them), then the workers start on it and the decisions come in.
    for i in range(n_backlog):
        start_run(workflow=BACKLOG, input={"n": i})
    assert _backlog_left() == n_backlog
    with _resumer(env, resumer), env.workers():
        for esc in Escalation.objects.filter(status=EscalationStatus.OPEN).order_by("created_at"):
            if WorkflowRun.objects.get(actions=esc.action_id).status != RunStatus.WAITING:
                # Its other escalation's approval resumed it: it goes on in that round.
                not_waiting += 1
                continue
            depths.append(_backlog_left())
            decide_escalation(
                escalation_id=esc.pk, user=data["admin"], verdict=Verdict.APPROVE, via=Via.API
            )
            executed = Action.objects.filter(pk=esc.action_id, status=ActionStatus.EXECUTED)
            env.wait_until(executed.exists, timeout=120)
            action = Action.objects.get(pk=esc.action_id)
            decided = Decision.objects.get(escalation=esc).created_at
            assert action.executed_at is not None
            sent.append((action.executed_at - decided).total_seconds())
            # The coordinator's round that took the run up again after the decision.
            resumed = (
                TraceEvent.objects.filter(
                    run_id=action.run_id, message="run resumed", created_at__gte=decided
                )
                .order_by("created_at")
                .values_list("created_at", flat=True)
                .first()
            )
            assert resumed is not None, f"run {action.run_id}: " + " | ".join(
                TraceEvent.objects.filter(run_id=action.run_id)
                .order_by("created_at")
                .values_list("message", flat=True)
            )
            latencies.append((resumed - decided).total_seconds())
        left = _backlog_left()
        env.purge_queue()
    priority_tasks, priority_runs = _priority_drains(env)
    layout = f"{env.n_workers} worker(s) x{env.concurrency}" + (
        " + production's resumer (1 child, priority queue only)" if resumer else ", no resumer"
    )
    note = (
        f"{len(latencies)} approvals while {n_backlog} ready one-step runs "
        f"({STEP_SECONDS * 1000:.0f} ms each) waited: backlog left at each decision "
        f"{min(depths)}-{max(depths)}, {left} after the last; {priority_tasks} priority drains "
        f"(drain_resumes) ran, coordinating {priority_runs} runs (a run whose escalation's "
        "drain found it already taken counts nowhere; one coordinated twice, twice); "
        f"ENGINE_BATCH_MAX {settings.ENGINE_BATCH_MAX}; {layout}"
        + (
            f"; {not_waiting} decided while their run was not waiting (left out)"
            if not_waiting
            else ""
        )
    )
    return {
        "latencies": latencies,
        "sent": sent,
        "depths": depths,
        "priority_runs": priority_runs,
        "note": note,
    }


def run(env: BenchEnv) -> list[Result]:
    from django.conf import settings

    from bench.harness import CELERY_RTT, Result, percentile

    modules = [m for m in os.environ.get("WORKFLOW_MODULES", "").split(",") if m]
    if "bench.bench_decisions" not in modules:
        # The workers must know the backlog's workflow.
        os.environ["WORKFLOW_MODULES"] = ",".join([*modules, "bench.bench_decisions"])
    settings.UNDO_WINDOW_SECONDS = 0
    results: list[Result] = []
    # As deployed (config/supervisord.conf: a resumer beside the workers), then with every
    # worker on both queues and none kept for decisions (`celery -A config worker -Q
    # caliber-priority,caliber` elsewhere, the test suite's and the other benches' layout).
    for resumer, suffix in ((True, ""), (False, "_no_resumer")):
        got = _phase(env, resumer=resumer)
        lat, sent, note = got["latencies"], got["sent"], got["note"]
        target = "< 1000 ms" if resumer else ""
        results += [
            Result(
                f"decision_to_resume{suffix}_p50",
                percentile(lat, 50) * 1000,
                "ms",
                better="lower",
                notes=note,
                limit=CELERY_RTT,
            ),
            Result(
                f"decision_to_resume{suffix}_p95",
                percentile(lat, 95) * 1000,
                "ms",
                target=target,
                better="lower",
                notes=note,
                limit=CELERY_RTT,
            ),
            Result(
                f"decision_to_sent{suffix}_p95",
                percentile(sent, 95) * 1000,
                "ms",
                better="lower",
                notes="to the approved reply's executed_at (resumed, verified, sent)",
                limit=CELERY_RTT,
            ),
            Result(
                f"backlog_at_decision{suffix}_min", float(min(got["depths"])), "runs", notes=note
            ),
            Result(
                f"resumes_by_priority_drain{suffix}",
                float(got["priority_runs"]),
                "runs",
                notes=note,
            ),
        ]
    return results
