"""Run latency at a steady 10 runs/s (issue 20: "no worse than today's"), the peer workload.

Runs of the peer workflows (bench.peers.caliber_flow: propose -> gate -> execute) are
started from this process on an open-loop schedule, one every 100 ms whatever the system
does (a late start is not moved back: the schedule is the arrival rate), `BENCH_LATENCY_RUNS`
(200) of each, through the bench's real workers.

auto: latency = the run's `finished_at` - `created_at` (database timestamps), start to done.
approval: a reviewer thread approves each escalation as soon as it appears (as e2e does);
the run's machine time is split where a person's time begins and ends: start -> paused (the
escalation's `created_at` - the run's `created_at`) and decision -> done (`finished_at` -
the decision's `created_at`); their sum is the run's latency without the person.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.harness import CELERY_RTT, BenchEnv, Result, percentile

RATE_PER_S = 10.0


def _paced(n: int, start: Any) -> float:
    """Start n runs at RATE_PER_S on a fixed schedule; the rate achieved."""
    t0 = last = time.perf_counter()
    for i in range(n):
        due = t0 + i / RATE_PER_S
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        last = time.perf_counter()
        start(i)
    # n starts span n - 1 intervals.
    return (n - 1) / (last - t0) if n > 1 and last > t0 else RATE_PER_S


def _ms(values: list[float], pct: float) -> float:
    return percentile(values, pct) * 1000


def run(env: BenchEnv) -> list[Result]:
    from django.db import connection

    from bench.bench_e2e import approve_open
    from bench.peers.bench_side_by_side import _policy
    from bench.peers.caliber_flow import APPROVAL, AUTO
    from escalations.models import Decision, Escalation
    from workflows.actions import start_run
    from workflows.models import PolicyOutcome, RunStatus, WorkflowRun

    n = env.scale(int(os.environ.get("BENCH_LATENCY_RUNS", "200")), 4)
    workers = f"{env.n_workers} worker(s) x{env.concurrency}"
    results: list[Result] = []

    def done(workflow: str, count: int) -> bool:
        runs = WorkflowRun.objects.filter(workflow=workflow)
        failed = runs.filter(status=RunStatus.FAILED).first()
        if failed is not None:
            raise RuntimeError(f"run {failed.pk} failed: {failed.error}")
        return runs.filter(status=RunStatus.SUCCEEDED).count() >= count

    # --- auto: start to done.
    env.reset()
    _policy(PolicyOutcome.AUTO, AUTO)
    with env.workers():
        warm = env.process_count * 2
        for i in range(warm):
            start_run(workflow=AUTO, input={"item": f"warm-{i}"})
        env.wait_until(lambda: done(AUTO, warm))
        warm_ids = set(WorkflowRun.objects.filter(workflow=AUTO).values_list("pk", flat=True))
        rate = _paced(n, lambda i: start_run(workflow=AUTO, input={"item": f"item-{i}"}))
        env.wait_until(lambda: done(AUTO, warm + n))
    lat = [
        (finished - created).total_seconds()
        for pk, created, finished in WorkflowRun.objects.filter(workflow=AUTO).values_list(
            "pk", "created_at", "finished_at"
        )
        if pk not in warm_ids and finished is not None
    ]
    note = f"{n} peer_auto runs started at {rate:.1f}/s (asked {RATE_PER_S:g}/s); {workers}"
    results += [
        Result(f"auto_latency_p{pct}", _ms(lat, pct), "ms", "", "lower", note, CELERY_RTT)
        for pct in (50, 95)
    ] + [
        Result("auto_achieved_per_s", rate, "runs/s", notes=note),
    ]

    # --- approval: start to paused, decision to done; a reviewer approves as they appear.
    data = env.reset()
    _policy(PolicyOutcome.REVIEW, APPROVAL)
    stop = threading.Event()

    def reviewer() -> None:
        try:
            while not stop.is_set():
                if not approve_open(data["admin"]):
                    time.sleep(0.005)
        finally:
            connection.close()

    with env.workers():
        thread = threading.Thread(target=reviewer)
        thread.start()
        try:
            warm = env.process_count * 2
            for i in range(warm):
                start_run(workflow=APPROVAL, input={"item": f"warm-{i}"})
            env.wait_until(lambda: done(APPROVAL, warm))
            warm_ids = set(
                WorkflowRun.objects.filter(workflow=APPROVAL).values_list("pk", flat=True)
            )
            rate = _paced(n, lambda i: start_run(workflow=APPROVAL, input={"item": f"item-{i}"}))
            env.wait_until(lambda: done(APPROVAL, warm + n))
        finally:
            stop.set()
            thread.join()
    runs = {
        pk: (created, finished)
        for pk, created, finished in WorkflowRun.objects.filter(workflow=APPROVAL).values_list(
            "pk", "created_at", "finished_at"
        )
        if pk not in warm_ids
    }
    paused = {
        run_id: at
        for run_id, at in Escalation.objects.filter(action__run_id__in=runs).values_list(
            "action__run_id", "created_at"
        )
    }
    decided = {
        run_id: at
        for run_id, at in Decision.objects.filter(escalation__action__run_id__in=runs).values_list(
            "escalation__action__run_id", "created_at"
        )
    }
    to_pause = [(paused[pk] - created).total_seconds() for pk, (created, _) in runs.items()]
    to_done = [
        (finished - decided[pk]).total_seconds()
        for pk, (_, finished) in runs.items()
        if finished is not None
    ]
    machine = [
        (paused[pk] - created).total_seconds() + (finished - decided[pk]).total_seconds()
        for pk, (created, finished) in runs.items()
        if finished is not None
    ]
    note = (
        f"{n} peer_approval runs started at {rate:.1f}/s (asked {RATE_PER_S:g}/s), each approved "
        f"as it appeared; {workers}"
    )
    for name, values in (
        ("approval_start_to_paused", to_pause),
        ("approval_decision_to_done", to_done),
        ("approval_machine_latency", machine),
    ):
        for pct in (50, 95):
            results.append(
                Result(
                    f"{name}_p{pct}",
                    _ms(values, pct),
                    "ms",
                    better="lower",
                    notes=note,
                    limit=CELERY_RTT,
                )
            )
    results.append(Result("approval_achieved_per_s", rate, "runs/s", notes=note))
    return results
