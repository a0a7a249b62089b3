"""The peer workload on both systems, in one process tree, against one PostgreSQL.

Caliber: runs of `peer_approval` / `peer_auto` (bench.peers.caliber_flow) started from this
process through `start_run`, executed by the bench's celery workers; approvals through
`decide_escalation` (what the API and the browser call), from this process. Starts and
approvals come from as many threads as LangGraph has processes.
LangGraph: bench.peers.langgraph_flow, in as many processes as Caliber has pool children.

Per run, each side's database work is read from pg_stat_database (transactions committed,
rows written) for the bench database only, after every process that did the work exited
(backends flush their counters on exit); this process's own polling is subtracted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.harness import CELERY_RTT, CELERY_THROUGHPUT, PG_COMMITS, PG_QUERIES, BenchEnv, Result
from bench.own_cpu import OwnCpu
from bench.peers import langgraph_flow

# LangGraph's durability modes: "async" is its default (checkpoints written while the next
# step runs, awaited before invoke returns or interrupts); "sync" writes each before the next
# step starts; "exit" only when the graph returns or interrupts (a crash mid-run loses it).
DURABLE_MODES = ("async", "sync")
INFORMATIONAL_MODES = ("exit",)
LANGGRAPH_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
# How often this process looks whether Caliber's batch is done. Its queries share the
# machine with the work measured (LangGraph's side waits on a barrier instead): every 10 ms
# they took ~5% of the CPU; 50 ms adds at most 0.05 s to a batch of ~10 s.
POLL_SECONDS = 0.05


@dataclass
class DbWork:
    xacts: int
    rows: int
    sessions: int = 0
    cpu_ms: float = 0.0  # the whole machine's busy CPU time (every process), in ms
    # The CPU of the processes doing the work only (bench.own_cpu: this process, its
    # workers, the bench database's backends): what other users of the machine do is not in
    # it. Measured for Caliber's batches.
    own_cpu_ms: float | None = None
    own_cpu_split: dict[str, float] | None = None  # by kind: bench, workers, postgres


def _conninfo() -> str:
    return os.environ["DATABASE_URL"]


def _counters() -> DbWork:
    import psycopg
    from django.db import connection

    # Our own Django connection's pending counters, then a fresh reader's view.
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.05)
    with psycopg.connect(_conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, sessions "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    # This reader's own session and transaction are counted too: taken off in _delta.
    return DbWork(xacts=int(row[0]), rows=int(row[1]), sessions=int(row[2]))


def _delta(before: DbWork, after: DbWork, polls: int = 0) -> DbWork:
    return DbWork(
        xacts=after.xacts - before.xacts - polls - 1,
        rows=after.rows - before.rows,
        sessions=after.sessions - before.sessions - 1,
    )


class _Polls:
    """Counts this process's autocommit statements while waiting (not part of the work)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        from django.db import connection

        if not connection.in_atomic_block:
            self.count += 1
        return execute(sql, params, many, context)


def _policy(outcome: str, workflow: str) -> None:
    from bench.peers.caliber_flow import ACTION_TYPE
    from escalations.models import AutonomyPolicy

    # Only the benchmark's policy: the seeded ones would add their own (unrelated) verdicts.
    AutonomyPolicy.objects.all().delete()
    AutonomyPolicy.objects.create(
        name=f"peer benchmark: {outcome}",
        workflow=workflow,
        action_type=ACTION_TYPE,
        outcome=outcome,
        min_confidence=0.0,
        irreversible_requires_review=False,
    )
    from escalations.policy import clear_cache

    clear_cache()


def _in_threads(k: int, fn: Callable[[Any], object], items: list[Any]) -> None:
    """`fn` over `items` from `k` threads, each on its own database connection: as many
    starters and approvers as LangGraph has processes (one thread would be the bottleneck)."""
    from django.db import connection

    def work(chunk: list[Any]) -> None:
        try:
            for item in chunk:
                fn(item)
        finally:
            connection.close()

    with ThreadPoolExecutor(k) as pool:
        list(pool.map(work, [items[i::k] for i in range(k)]))


def _caliber(env: BenchEnv, *, n: int, approval: bool) -> tuple[float, float, DbWork]:
    """(seconds for all n, seconds until all were waiting, db work) for one Caliber batch."""
    from django.db import connection

    from bench.bench_e2e import approve_open
    from bench.peers.caliber_flow import APPROVAL, AUTO
    from escalations.actions import decide_escalation
    from escalations.models import Escalation, EscalationStatus, Verdict, Via
    from workflows.actions import start_run
    from workflows.models import PolicyOutcome, RunStatus, WorkflowRun

    data = env.reset()
    workflow = APPROVAL if approval else AUTO
    _policy(PolicyOutcome.REVIEW if approval else PolicyOutcome.AUTO, workflow)
    runs = WorkflowRun.objects.filter(workflow=workflow)

    def finished(count: int) -> bool:
        failed = runs.filter(status=RunStatus.FAILED).first()
        if failed is not None:
            raise RuntimeError(f"Caliber run {failed.pk} failed: {failed.error}")
        return runs.filter(status=RunStatus.SUCCEEDED).count() >= count

    polls = _Polls()
    with env.workers():
        # Warm every pool child (imports, connections, the compiled policy set): untimed.
        warm = env.process_count * 2
        for i in range(warm):
            start_run(workflow=workflow, input={"item": f"warm-{i}"})
        if approval:
            env.wait_until(
                lambda: Escalation.objects.filter(status=EscalationStatus.OPEN).count() >= warm
            )
            approve_open(data["admin"], limit=warm)
        env.wait_until(lambda: finished(warm))
        before = _counters()
        own = OwnCpu(connection.settings_dict["NAME"])
        with connection.execute_wrapper(polls), own:
            t0 = time.perf_counter()
            busy0 = langgraph_flow.busy_ms()
            _in_threads(
                env.process_count,
                lambda i: start_run(workflow=workflow, input={"item": f"item-{i}"}),
                list(range(n)),
            )
            waiting = 0.0
            if approval:
                open_ = Escalation.objects.filter(status=EscalationStatus.OPEN)
                env.wait_until(lambda: open_.count() >= n, interval=POLL_SECONDS)
                waiting = time.perf_counter() - t0
                _in_threads(
                    env.process_count,
                    lambda pk: decide_escalation(
                        escalation_id=pk, user=data["admin"], verdict=Verdict.APPROVE, via=Via.API
                    ),
                    list(open_.values_list("pk", flat=True)),
                )
            env.wait_until(lambda: finished(warm + n), interval=POLL_SECONDS)
            total = time.perf_counter() - t0
            busy = langgraph_flow.busy_ms() - busy0
    work = _delta(before, _counters(), polls.count)
    work.cpu_ms = busy  # the timed part only, as for LangGraph
    work.own_cpu_ms = own.ms
    work.own_cpu_split = own.split
    return total, waiting or total, work


def _langgraph(
    env: BenchEnv, *, n: int, approval: bool, durability: str
) -> tuple[float, float, DbWork]:
    import psycopg

    with psycopg.connect(_conninfo(), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(LANGGRAPH_TABLES)}")
    processes = env.process_count
    # Warm: imports and first connections happen before the start line anyway; one small
    # batch primes PostgreSQL's caches for these tables like Caliber's warm runs do.
    langgraph_flow.run_batch(
        _conninfo(),
        n=processes * 2,
        processes=processes,
        approval=approval,
        durability=durability,
        prefix=f"warm-{time.monotonic_ns()}",
    )
    before = _counters()
    timing = langgraph_flow.run_batch(
        _conninfo(),
        n=n,
        processes=processes,
        approval=approval,
        durability=durability,
        prefix=f"run-{time.monotonic_ns()}",
    )
    after = _counters()
    work = _delta(before, after)
    work.cpu_ms = timing.cpu_ms  # the timed part only: not the processes' start-up
    return timing.total, timing.started, work


def _figures(
    system: str, path: str, n: int, total: float, started: float, work: DbWork, notes: str
) -> list[Result]:
    unit_rate = "rt/s" if path == "approval" else "runs/s"
    # Caliber's runs hop through Celery; LangGraph's are bounded by its checkpoint writes.
    caliber = system == "caliber"
    out = [
        Result(
            f"{system}.{path}_per_s",
            n / total,
            unit_rate,
            notes=notes,
            limit=CELERY_THROUGHPUT if caliber else PG_COMMITS,
        ),
        Result(
            f"{system}.{path}_ms_per_run",
            total / n * 1000,
            "ms",
            better="lower",
            notes="wall time per run at this concurrency (1 / throughput)",
            limit=CELERY_RTT if caliber else PG_QUERIES,
        ),
        Result(
            f"{system}.{path}_xacts_per_run",
            work.xacts / n,
            "xacts",
            better="lower",
            notes="transactions committed per run (pg_stat_database; read-only ones too)",
        ),
        Result(
            f"{system}.{path}_rows_written_per_run",
            work.rows / n,
            "rows",
            better="lower",
            notes="rows inserted + updated + deleted per run (pg_stat_database)",
        ),
    ]
    out.append(
        Result(
            f"{system}.{path}_cpu_ms_per_run",
            work.cpu_ms / n,
            "ms",
            better="lower",
            notes="the machine's busy CPU per run, every process (/proc/stat) over the timed "
            "batch: the workers, PostgreSQL, Redis and the starter/approver alike",
        )
    )
    if work.own_cpu_ms is not None:
        out.append(
            Result(
                f"{system}.{path}_own_cpu_ms_per_run",
                work.own_cpu_ms / n,
                "ms",
                better="lower",
                notes="CPU per run of the processes doing the work only (bench.own_cpu: "
                "the starter/approver, the workers, the bench database's backends): "
                "steadier than the machine's on a shared machine",
            )
        )
    out.append(
        Result(
            f"{system}.{path}_connections_per_run",
            work.sessions / n,
            "conns",
            better="lower",
            notes="PostgreSQL sessions opened per run (pg_stat_database)",
        )
    )
    if path == "approval":
        out.append(
            Result(
                f"{system}.approval_start_to_paused_per_s",
                n / started,
                "runs/s",
                notes="phase 1: started until every run waits for its approval",
            )
        )
    return out


def run(env: BenchEnv) -> list[Result]:
    n = env.scale(int(os.environ.get("BENCH_PEER_RUNS", "300")), 4)
    procs = f"{env.process_count} processes"
    langgraph_flow.setup(_conninfo())
    results: list[Result] = []
    modes = DURABLE_MODES + INFORMATIONAL_MODES
    for path in ("approval", "auto"):
        approval = path == "approval"
        total, started, work = _caliber(env, n=n, approval=approval)
        results += _figures(
            "caliber",
            path,
            n,
            total,
            started,
            work,
            f"{n} runs; {env.n_workers} celery worker(s) x{env.concurrency}, started and "
            "approved from the bench process",
        )
        for mode in modes:
            total, started, work = _langgraph(env, n=n, approval=approval, durability=mode)
            results += _figures(
                f"langgraph_{mode}",
                path,
                n,
                total,
                started,
                work,
                f"{n} runs; {procs}, PostgresSaver, durability={mode!r}",
            )
    return results
