"""The benchmark harness: a fresh PostgreSQL database, Redis, real worker processes.

Benchmarks are modules `bench/bench_<area>.py` exposing `run(env: BenchEnv) -> list[Result]`.
`python -m bench` (make bench) runs each `--repeat` times and reports the median of every
figure, beside the machine's own limits measured in the same run (bench_limits): a figure
names the limit it is bounded by (`Result.limit`, a `limits.*` figure) and the table shows it
as a ratio to that limit.

Worker processes: `env.workers()` starts `env.n_workers` celery workers of `env.concurrency`
prefork children each (`--workers` / `--concurrency`, or BENCH_WORKERS / BENCH_CONCURRENCY).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support import processes

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB", "caliber_bench")
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

PEER_FLOW = "bench.peers.caliber_flow"

# The limits every figure can be read against (names of `limits.*` figures).
PG_COMMITS = "postgres_commits_per_s"
PG_QUERIES = "postgres_query_round_trips_per_s"
REDIS_RTT = "redis_round_trips_per_s"
CELERY_RTT = "celery_noop_round_trips_per_s"
CELERY_THROUGHPUT = "celery_noop_throughput_per_s"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str = ""
    better: Literal["higher", "lower"] = "higher"
    notes: str = ""
    # The machine limit this figure is bounded by: one of the `limits.*` names above. A rate
    # is shown as a fraction of the limit's rate; a latency (ms) as a multiple of the limit's
    # own round trip (1000 / its rate).
    limit: str = ""


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    better: str = "higher"
    notes: str = ""
    limit: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def ratio(self, limit_rate: float | None) -> float | None:
        """This figure against its limit (see Result.limit); None without one."""
        if not limit_rate or not self.values:
            return None
        if self.unit == "ms":
            return self.median / (1000.0 / limit_rate)
        return self.median / limit_rate

    def met(self) -> bool | None:
        """Whether a numeric target like "< 100 ms", "p99 < 1 ms" or ">= 2x" is met."""
        return target_met(self.target, self.median)


_TARGET = re.compile(r"(<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)?)")


def target_met(target: str, value: float) -> bool | None:
    match = _TARGET.search(target)
    if match is None:
        return None
    op, bound = match.group(1), float(match.group(2))
    return {
        "<": value < bound,
        "<=": value <= bound,
        ">": value > bound,
        ">=": value >= bound,
    }[op]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def configure_environment() -> None:
    """Point Django at the bench database and Redis before anything imports settings."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.main",
        DATABASE_URL=f"{PG_URL}/{BENCH_DB}",
        REDIS_URL=REDIS_URL,
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-not-secret"),
        CELERY_QUEUE=f"caliber-bench-{os.getpid()}",
        CHANNELS_PREFIX=f"caliber-bench-{os.getpid()}",
        CELERY_RESULT_BACKEND=REDIS_URL,
        LOG_LEVEL="WARNING",
    )
    # The peer comparison's 3-step workflow, for every benchmark and the workers they start.
    extra = [m for m in os.environ.get("WORKFLOW_MODULES", "").split(",") if m.strip()]
    if PEER_FLOW not in extra:
        os.environ["WORKFLOW_MODULES"] = ",".join([*extra, PEER_FLOW])


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


class BenchEnv:
    """What a benchmark gets: Django on the bench database, demo data, real workers."""

    def __init__(self, *, n_workers: int | None = None, concurrency: int | None = None) -> None:
        self.root = ROOT
        self.log_dir = ROOT / "var" / "bench-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.n_workers = n_workers or int(os.environ.get("BENCH_WORKERS", "1"))
        self.concurrency = concurrency or int(os.environ.get("BENCH_CONCURRENCY", "2"))
        # Set by a quick smoke run (tests/bench): benchmarks shrink their N to seconds.
        self.quick = os.environ.get("BENCH_QUICK") == "1"

    def scale(self, n: int, quick: int) -> int:
        """`n` normally; `quick` in a smoke run, so the harness is exercised, not measured."""
        return quick if self.quick else n

    @property
    def process_count(self) -> int:
        """How many OS processes execute tasks: what a peer gets to be fair."""
        return self.n_workers * self.concurrency

    # --- data -------------------------------------------------------------------------------

    def seed(self) -> dict[str, Any]:
        """The demo teams, users (admin, alice, bob), agent and policies."""
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from escalations.models import AgentProfile, AutonomyPolicy, Team

        with open(os.devnull, "w") as devnull:
            call_command("seed_demo", quiet_logins=True, no_history=True, stdout=devnull)
        return {
            "admin": User.objects.get(username="admin"),
            "alice": User.objects.get(username="alice"),
            "bob": User.objects.get(username="bob"),
            "support": Team.objects.get(slug="support"),
            "billing": Team.objects.get(slug="billing"),
            "agent": AgentProfile.objects.get(name="triage-agent"),
            "policies": list(AutonomyPolicy.objects.all()),
        }

    def reset(self) -> dict[str, Any]:
        """Empty every table, purge the queue, and seed again.

        Workers may still be busy (a finished triage run's follow-up run still being
        planned): the queue is purged first so nothing new starts, and a TRUNCATE that
        deadlocks with a worker's last transaction is retried once that has finished."""
        from django.core.management import call_command
        from django.core.management.base import CommandError

        self.purge_queue()
        for attempt in range(10):
            try:
                call_command("flush", interactive=False, verbosity=0)
                break
            except CommandError:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        self.purge_queue()
        return self.seed()

    def purge_queue(self) -> None:
        """Empty the bench's queues, and clear the drain's wake-up flags with them: a flag
        whose message was purged would silence every start's wake-up until it expires (the
        bench runs no beat to wake what it silenced), and the next batch would wait."""
        from config.celery import app
        from workflows import outbox

        with app.connection_for_write() as conn:
            base = os.environ["CELERY_QUEUE"]
            for queue in (base, f"{base}-priority", f"{base}-model"):
                conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]
        for task in (outbox.DRAIN, outbox.DRAIN_RESUMES):
            outbox.drain_woken(task)

    # --- processes --------------------------------------------------------------------------

    @contextlib.contextmanager
    def daphne(self, name: str) -> Iterator[str]:
        """Daphne serving the real ASGI app with this process's environment, on a free
        loopback port; yields its base URL and stops it on exit."""
        port = processes.free_port()
        proc = processes.start_daphne(
            env=os.environ, log_path=self.log_dir / f"daphne-{name}.log", port=port, timeout=60
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            processes.stop(proc)

    @contextlib.contextmanager
    def workers(
        self, n: int | None = None, concurrency: int | None = None, pool: str = "prefork"
    ) -> Iterator[list[subprocess.Popen[bytes]]]:
        """`n` real `celery worker` processes on the bench queue, stopped on exit. Yields the
        worker (parent) processes; `worker_pids` finds their pool children."""
        n = n or self.n_workers
        concurrency = concurrency or self.concurrency
        procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ, CELERY_LOG_LEVEL="INFO")

        def start(i: int) -> subprocess.Popen[bytes]:
            proc = processes.start_worker(
                env=env,
                log_path=self.log_dir / f"worker-{i}.log",
                pool=pool,
                concurrency=concurrency,
                name=f"bench{i}@%h",
                timeout=60,
            )
            procs.append(proc)
            return proc

        try:
            # Started side by side (each takes seconds to import and connect): four one after
            # the other cost the curve (bench.peers.curve) a minute of waiting.
            with ThreadPoolExecutor(n) as pool_:
                for future in [pool_.submit(start, i) for i in range(n)]:
                    future.result()
            yield procs
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                processes.stop(proc)

    @staticmethod
    def worker_pids(procs: list[subprocess.Popen[bytes]]) -> list[int]:
        """The pool children of the given worker processes (where tasks actually run)."""
        pids = []
        for proc in procs:
            try:
                raw = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
            except OSError:
                continue
            pids += [int(p) for p in raw.split()]
        return pids

    @staticmethod
    def rss_kib(pid: int) -> int:
        """Resident set size of a process, from /proc (0 if it is gone)."""
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def wait_until(
        predicate: Callable[[], Any], timeout: float = 300, interval: float = 0.02
    ) -> None:
        if os.environ.get("BENCH_QUICK") == "1":
            # A smoke run's tiny batches finish in seconds: one that waits for long is stuck
            # (a wake-up sent where no worker listens), and says so soon.
            timeout = min(timeout, float(os.environ.get("BENCH_QUICK_TIMEOUT", "60")))
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"benchmark condition not met in {timeout}s")
            time.sleep(interval)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- what one run costs: queries, write commits, Celery hops (counted in this process) ------


_WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Costs:
    queries: int = 0
    commits: int = 0  # transactions that wrote (each one a WAL flush on commit)
    tasks: int = 0  # Celery messages sent
    by_kind: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def count_costs() -> Iterator[Costs]:
    """Count every query this process's default connection runs, the transactions among
    them that wrote, and the Celery tasks the outbox sends (sent for real)."""
    from django.db import connections

    from workflows import outbox, tasks

    conn = connections["default"]
    costs = Costs()
    dirty = [False]

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        costs.queries += 1
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        costs.by_kind[head] = costs.by_kind.get(head, 0) + 1
        upper = sql.upper()
        writes = (
            head in _WRITES
            or "FOR UPDATE" in upper
            or "FOR NO KEY" in upper
            # A data-modifying CTE (a start, a decision, the engine's prepared writes).
            or (head == "WITH" and any(f"{w} " in upper for w in ("INSERT", "UPDATE", "DELETE")))
        )
        if writes:
            if conn.in_atomic_block:
                dirty[0] = True
            else:
                costs.commits += 1
        return execute(sql, params, many, context)

    real_commit = conn.commit
    # Put back as found: an instance attribute left behind (the bound method) would shadow
    # the class's `commit` for good, and a later patch of the class (a test counting
    # commits) would count none.
    had_own_commit = "commit" in vars(conn)
    real_send = outbox.send
    real_enqueue = tasks.enqueue_advance

    def commit() -> None:
        if dirty[0]:
            costs.commits += 1
            dirty[0] = False
        real_commit()

    def send(task: str, args: list[Any], countdown: float = 0) -> None:
        costs.tasks += 1
        real_send(task, args, countdown)

    def enqueue_advance(run_id: Any, countdown: float = 0) -> None:
        costs.tasks += 1
        real_enqueue(run_id, countdown)

    conn.commit = commit  # type: ignore[method-assign]
    outbox.send = send
    tasks.enqueue_advance = enqueue_advance
    try:
        with conn.execute_wrapper(wrapper):
            yield costs
    finally:
        if had_own_commit:
            conn.commit = real_commit  # type: ignore[method-assign]
        else:
            del conn.commit
        outbox.send = real_send
        tasks.enqueue_advance = real_enqueue


@contextlib.contextmanager
def inline_engine() -> Iterator[Callable[[], int]]:
    """Run the engine in this process instead of in workers: the outbox's sends are kept in a
    list, and the yielded `drain()` runs them (and what they send) until none is left. For
    counting what a run costs; the order is the one a single worker would see."""
    from workflows import engine, outbox, tasks

    pending: list[tuple[str, list[Any]]] = []
    real_send = outbox.send
    real_enqueue = tasks.enqueue_advance

    def send(task: str, args: list[Any], countdown: float = 0) -> None:
        pending.append((task, list(args)))

    def enqueue_advance(run_id: Any, countdown: float = 0) -> None:
        pending.append((outbox.ADVANCE, [str(run_id)]))

    def drain() -> int:
        import uuid

        ran = 0
        while pending:
            task, args = pending.pop(0)
            ran += 1
            if task in (outbox.ADVANCE, outbox.RESUME):
                engine.advance_run(run_id=uuid.UUID(args[0]))
            elif task == outbox.DRAIN:
                engine.drain_runs()
            elif task == outbox.DRAIN_RESUMES:
                engine.drain_runs(starts=False)
            elif task in (outbox.RUN_STEP, outbox.RUN_MODEL_STEP):
                engine.run_step(run_id=uuid.UUID(args[0]), step_name=args[1])
            elif task == "escalations.tasks.write_summaries":
                # A worker writes the model's summaries after the escalations commit: part of
                # what a run costs.
                from escalations.actions.summaries import write_waiting_summaries

                write_waiting_summaries()
            else:
                raise RuntimeError(f"inline engine: no handler for {task}")
        return ran

    outbox.send = send
    tasks.enqueue_advance = enqueue_advance
    try:
        yield drain
    finally:
        outbox.send = real_send
        tasks.enqueue_advance = real_enqueue
