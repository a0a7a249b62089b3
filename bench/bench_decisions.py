"""A person's decision jumps the queue: decision-to-resume under a backlog of queued steps.

Triage runs wait with their replies escalated; then 1,000 one-step runs are queued (each
step stands in for a model call: 50 ms) while no worker runs, and the workers start on them:
more than two children clear in minutes. While that backlog is deep, the bench process
approves the waiting replies one by one, through the same decide action the browser uses.
Decision-to-resume is the run's "run resumed" trace event minus its decision's `created_at`
(both database timestamps): the run taken up again from the priority queue every worker
consumes first. Decision-to-sent goes on to the reply's `executed_at`. The undo window is
set to 0 here: it is a deliberate wait, not latency.
"""

from __future__ import annotations

import os
import time
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


def _queue_depth() -> int:
    from config.celery import app

    with app.connection_for_read() as conn:
        client = conn.default_channel.client  # type: ignore[attr-defined]
        return int(client.llen(os.environ["CELERY_QUEUE"]))


def run(env: BenchEnv) -> list[Result]:
    from django.conf import settings

    from bench.bench_e2e import _start
    from bench.harness import CELERY_RTT, Result, percentile
    from escalations.actions import decide_escalation
    from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
    from workflows.actions import start_run
    from workflows.models import Action, ActionStatus, TraceEvent

    n_waiting = env.scale(20, 3)
    n_backlog = env.scale(1000, 30)
    data = env.reset()
    modules = [m for m in os.environ.get("WORKFLOW_MODULES", "").split(",") if m]
    if "bench.bench_decisions" not in modules:
        # The workers must know the backlog's workflow.
        os.environ["WORKFLOW_MODULES"] = ",".join([*modules, "bench.bench_decisions"])
    settings.UNDO_WINDOW_SECONDS = 0
    latencies: list[float] = []
    sent: list[float] = []
    depths: list[int] = []
    with env.workers():
        _start(n_waiting, seed=11)
        env.wait_until(
            lambda: Escalation.objects.filter(status=EscalationStatus.OPEN).count() >= n_waiting
        )
    # The backlog is queued while no worker runs (creating runs here is slower than two
    # children clear them), then the workers start on it and the decisions come in.
    for i in range(n_backlog):
        start_run(workflow=BACKLOG, input={"n": i})
    env.wait_until(lambda: _queue_depth() >= n_backlog, timeout=60)
    with env.workers():
        for esc in Escalation.objects.filter(status=EscalationStatus.OPEN).order_by("created_at"):
            depths.append(_queue_depth())
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
            assert resumed is not None
            latencies.append((resumed - decided).total_seconds())
        left = _queue_depth()
        env.purge_queue()
    workers = f"{env.n_workers} worker(s) x{env.concurrency}"
    note = (
        f"{len(latencies)} approvals while {n_backlog} queued steps ({STEP_SECONDS * 1000:.0f} ms "
        f"each) waited: queue depth at each decision {min(depths)}-{max(depths)}, "
        f"{left} still queued after the last; {workers}"
    )
    return [
        Result(
            "decision_to_resume_p50",
            percentile(latencies, 50) * 1000,
            "ms",
            better="lower",
            notes=note,
            limit=CELERY_RTT,
        ),
        Result(
            "decision_to_resume_p95",
            percentile(latencies, 95) * 1000,
            "ms",
            target="< 1000 ms",
            better="lower",
            limit=CELERY_RTT,
        ),
        Result(
            "decision_to_sent_p50",
            percentile(sent, 50) * 1000,
            "ms",
            better="lower",
            notes="to the approved reply's executed_at (resumed, verified, sent)",
            limit=CELERY_RTT,
        ),
        Result(
            "decision_to_sent_p95",
            percentile(sent, 95) * 1000,
            "ms",
            better="lower",
            limit=CELERY_RTT,
        ),
        Result("queue_depth_at_decision_min", float(min(depths)), "tasks", notes=note),
    ]
