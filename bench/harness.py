"""The benchmark harness: a fresh PostgreSQL database, Redis, real worker processes.

Benchmarks are modules `bench/bench_<area>.py` exposing `run(env: BenchEnv) -> list[Result]`.
`python -m bench` (make bench) runs each `--repeat` times and reports the median of every
figure, beside the machine's own limits measured in the same run (bench_limits).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB", "caliber_bench")
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str = ""
    better: Literal["higher", "lower"] = "higher"
    notes: str = ""


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    better: str = "higher"
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)


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


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


class BenchEnv:
    """What a benchmark gets: Django on the bench database, demo data, real workers."""

    def __init__(self) -> None:
        self.root = ROOT
        self.log_dir = ROOT / "var" / "bench-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # --- data -------------------------------------------------------------------------------

    def seed(self) -> dict[str, Any]:
        """The demo teams, users (admin, alice, bob), agent and policies."""
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from escalations.models import AgentProfile, AutonomyPolicy, Team

        with open(os.devnull, "w") as devnull:
            call_command("seed_demo", quiet_logins=True, stdout=devnull)
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
        """Empty every table, purge the queue, and seed again."""
        from django.core.management import call_command

        call_command("flush", interactive=False, verbosity=0)
        self.purge_queue()
        return self.seed()

    def purge_queue(self) -> None:
        from config.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(os.environ["CELERY_QUEUE"])  # type: ignore[attr-defined]

    # --- processes --------------------------------------------------------------------------

    @contextlib.contextmanager
    def workers(self, n: int = 1, concurrency: int = 2, pool: str = "prefork") -> Iterator[None]:
        """`n` real `celery worker` processes on the bench queue, stopped on exit."""
        procs = []
        logs = []
        try:
            for i in range(n):
                log_path = self.log_dir / f"worker-{i}.log"
                log = open(log_path, "wb")
                logs.append((log, log_path))
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "config",
                            "worker",
                            f"--pool={pool}",
                            f"--concurrency={concurrency}",
                            "-Q",
                            os.environ["CELERY_QUEUE"],
                            "-n",
                            f"bench{i}@%h",
                            "--without-heartbeat",
                            "--without-mingle",
                            "--without-gossip",
                            "--loglevel=INFO",
                        ],
                        cwd=ROOT,
                        env=dict(os.environ, CELERY_LOG_LEVEL="INFO"),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            for proc, (_, log_path) in zip(procs, logs, strict=True):
                deadline = time.monotonic() + 60
                while b"ready." not in log_path.read_bytes():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker did not start: {log_path.read_text()[-2000:]}")
                    time.sleep(0.1)
            yield
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log, _ in logs:
                log.close()

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def wait_until(
        predicate: Callable[[], Any], timeout: float = 300, interval: float = 0.02
    ) -> None:
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
