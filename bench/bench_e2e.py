"""Runs per second end to end through real workers on PostgreSQL + Redis (issue 2).

auto: every action of the triage run acts alone. approve: the reply is escalated, a person
(the bench process, through the same decide action the browser uses) approves it as soon as
it appears, the run resumes in a worker and finishes.
"""

from __future__ import annotations

import threading
import time

from bench.harness import BenchEnv, Result, percentile

N_RUNS = 200
WORKERS = 1
CONCURRENCY = 2


def _start(n: int) -> float:
    import random

    from workflows.actions import start_run
    from workflows.demo_tickets import make_ticket

    rng = random.Random(7)
    started = time.perf_counter()
    for i in range(n):
        start_run(workflow="support_triage", input=make_ticket(rng, i + 1))
    return started


def _latencies() -> list[float]:
    from workflows.models import RunStatus, WorkflowRun

    rows = WorkflowRun.objects.filter(status=RunStatus.SUCCEEDED).values_list(
        "created_at", "finished_at"
    )
    return [(done - created).total_seconds() for created, done in rows if done is not None]


def _done(n: int) -> bool:
    from workflows.models import RunStatus, WorkflowRun

    return WorkflowRun.objects.filter(status=RunStatus.SUCCEEDED).count() >= n


def run(env: BenchEnv) -> list[Result]:
    from django.db import connection

    from escalations.actions import AlreadyDecided, decide_escalation
    from escalations.models import Escalation, EscalationStatus, Verdict, Via
    from workflows.models import PolicyOutcome

    results: list[Result] = []
    data = env.seed()
    with env.workers(n=WORKERS, concurrency=CONCURRENCY):
        # --- auto path: loosen every policy so nothing needs a person.
        for p in data["policies"]:
            p.outcome = PolicyOutcome.AUTO
            p.min_confidence = 0.0
            p.irreversible_requires_review = False
            p.save()
        started = _start(N_RUNS)
        env.wait_until(lambda: _done(N_RUNS))
        elapsed = time.perf_counter() - started
        lat = _latencies()
        results += [
            Result(
                "auto_runs_per_s",
                N_RUNS / elapsed,
                "runs/s",
                notes=f"{N_RUNS} triage runs, 6 steps, 3 executed actions each",
            ),
            Result("auto_run_latency_p50", percentile(lat, 50) * 1000, "ms", better="lower"),
            Result("auto_run_latency_p95", percentile(lat, 95) * 1000, "ms", better="lower"),
        ]

        # --- escalate then approve: replies always need a person.
        data = env.reset()
        stop = threading.Event()
        decided = [0]

        def reviewer() -> None:
            try:
                while not stop.is_set():
                    ids = list(
                        Escalation.objects.filter(status=EscalationStatus.OPEN).values_list(
                            "pk", flat=True
                        )[:50]
                    )
                    for pk in ids:
                        try:
                            decide_escalation(
                                escalation_id=pk,
                                user=data["admin"],
                                verdict=Verdict.APPROVE,
                                via=Via.API,
                            )
                            decided[0] += 1
                        except AlreadyDecided:
                            pass
                    if not ids:
                        time.sleep(0.005)
            finally:
                connection.close()

        thread = threading.Thread(target=reviewer)
        thread.start()
        try:
            started = _start(N_RUNS)
            env.wait_until(lambda: _done(N_RUNS))
            elapsed = time.perf_counter() - started
        finally:
            stop.set()
            thread.join()
        lat = _latencies()
        results += [
            Result(
                "approve_runs_per_s",
                N_RUNS / elapsed,
                "runs/s",
                notes=f"{N_RUNS} runs, {decided[0]} escalations approved as they appeared",
            ),
            Result("approve_run_latency_p50", percentile(lat, 50) * 1000, "ms", better="lower"),
            Result("approve_run_latency_p95", percentile(lat, 95) * 1000, "ms", better="lower"),
        ]
    return results
