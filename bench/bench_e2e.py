"""Runs per second end to end through real workers on PostgreSQL + Redis, and what one run
costs in queries, write commits and Celery hops.

auto: every action of the triage run acts alone. approve: the reply is escalated, a person
(the bench process, through the same decide action the browser uses) approves it as soon as
it appears, the run resumes in a worker and finishes.

Costs are counted with the engine run inline in this process (the outbox's sends kept and
run in order, as one worker would), over a few runs of each path.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from bench.harness import (
    CELERY_RTT,
    CELERY_THROUGHPUT,
    BenchEnv,
    Result,
    count_costs,
    inline_engine,
    percentile,
)

WORKFLOW = "support_triage"


def _start(n: int, seed: int = 7) -> float:
    from workflows.actions import start_run
    from workflows.demo_tickets import make_ticket

    rng = random.Random(seed)
    started = time.perf_counter()
    for i in range(n):
        start_run(workflow=WORKFLOW, input=make_ticket(rng, i + 1))
    return started


def _latencies() -> list[float]:
    from workflows.models import RunStatus, WorkflowRun

    rows = WorkflowRun.objects.filter(workflow=WORKFLOW, status=RunStatus.SUCCEEDED).values_list(
        "created_at", "finished_at"
    )
    return [(done - created).total_seconds() for created, done in rows if done is not None]


def _finished(n: int) -> bool:
    from workflows.models import RunStatus, WorkflowRun

    runs = WorkflowRun.objects.filter(workflow=WORKFLOW)
    failed = runs.filter(status=RunStatus.FAILED).first()
    if failed is not None:
        raise RuntimeError(f"run {failed.pk} failed: {failed.error}")
    return runs.filter(status=RunStatus.SUCCEEDED).count() >= n


def _loosen(policies: list[Any]) -> None:
    from workflows.models import PolicyOutcome

    for p in policies:
        p.outcome = PolicyOutcome.AUTO
        p.min_confidence = 0.0
        p.irreversible_requires_review = False
        p.review_patterns = p.block_patterns = ""
        p.save()


def approve_open(user: Any, limit: int = 50) -> int:
    """Approve what is open, as a reviewer would through the API. Returns how many."""
    from escalations.actions import AlreadyDecided, decide_escalation
    from escalations.models import Escalation, EscalationStatus, Verdict, Via

    decided = 0
    ids = list(
        Escalation.objects.filter(status=EscalationStatus.OPEN).values_list("pk", flat=True)[:limit]
    )
    for pk in ids:
        try:
            decide_escalation(escalation_id=pk, user=user, verdict=Verdict.APPROVE, via=Via.API)
            decided += 1
        except AlreadyDecided:
            pass
    return decided


def _costs(env: BenchEnv, n: int, *, approve: bool) -> list[Result]:
    """Queries, write commits and Celery hops per run, the engine inline in this process."""
    data = env.reset()
    if not approve:
        _loosen(data["policies"])
    from workflows.models import RunStatus, WorkflowRun

    decided = 0
    with inline_engine() as drain, count_costs() as costs:
        _start(n, seed=3)
        drain()
        while True:
            got = approve_open(data["admin"], limit=1000)
            if not got:
                break
            decided += got
            drain()
    done = WorkflowRun.objects.filter(workflow=WORKFLOW, status=RunStatus.SUCCEEDED).count()
    if done != n:
        raise RuntimeError(f"cost runs: {done} of {n} succeeded")
    path = "approve" if approve else "auto"
    note = f"{n} runs inline" + (f", {decided} escalations approved" if approve else "")
    return [
        Result(f"{path}_queries_per_run", costs.queries / n, "queries", better="lower", notes=note),
        Result(
            f"{path}_commits_per_run",
            costs.commits / n,
            "commits",
            better="lower",
            notes="transactions that wrote (each a WAL flush)",
        ),
        Result(
            f"{path}_celery_hops_per_run",
            costs.tasks / n,
            "tasks",
            better="lower",
            notes="tasks sent per run (incl. the follow-up run it starts)",
        ),
    ]


def run(env: BenchEnv) -> list[Result]:
    from django.db import connection

    n_runs = env.scale(300, 4)
    workers = f"{env.n_workers} worker(s) x{env.concurrency}"
    results: list[Result] = []
    data = env.seed()
    with env.workers():
        # --- auto path: loosen every policy so nothing needs a person.
        _loosen(data["policies"])
        started = _start(n_runs)
        env.wait_until(lambda: _finished(n_runs))
        elapsed = time.perf_counter() - started
        lat = _latencies()
        results += [
            Result(
                "auto_runs_per_s",
                n_runs / elapsed,
                "runs/s",
                notes=f"{n_runs} triage runs (7 steps, 3 executed actions each); {workers}",
                limit=CELERY_THROUGHPUT,
            ),
            Result(
                "auto_run_latency_p50",
                percentile(lat, 50) * 1000,
                "ms",
                better="lower",
                limit=CELERY_RTT,
            ),
            Result(
                "auto_run_latency_p95",
                percentile(lat, 95) * 1000,
                "ms",
                better="lower",
                limit=CELERY_RTT,
            ),
        ]

        # --- escalate then approve: replies always need a person.
        data = env.reset()
        stop = threading.Event()
        decided = [0]

        def reviewer() -> None:
            try:
                while not stop.is_set():
                    got = approve_open(data["admin"])
                    decided[0] += got
                    if not got:
                        time.sleep(0.005)
            finally:
                connection.close()

        thread = threading.Thread(target=reviewer)
        thread.start()
        try:
            started = _start(n_runs)
            env.wait_until(lambda: _finished(n_runs))
            elapsed = time.perf_counter() - started
        finally:
            stop.set()
            thread.join()
        lat = _latencies()
        results += [
            Result(
                "approve_runs_per_s",
                n_runs / elapsed,
                "runs/s",
                notes=f"{n_runs} runs, {decided[0]} escalations approved as they appeared; "
                f"{workers}",
                limit=CELERY_THROUGHPUT,
            ),
            Result(
                "approve_run_latency_p50",
                percentile(lat, 50) * 1000,
                "ms",
                better="lower",
                limit=CELERY_RTT,
            ),
            Result(
                "approve_run_latency_p95",
                percentile(lat, 95) * 1000,
                "ms",
                better="lower",
                limit=CELERY_RTT,
            ),
        ]
    n_cost = env.scale(20, 2)
    results += _costs(env, n_cost, approve=False)
    results += _costs(env, n_cost, approve=True)
    return results
