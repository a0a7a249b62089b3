"""The chaos harness: real celery worker processes we may kill, a reconciler doing beat's job
every half second, a private Redis we may kill, and the invariants checked after each test.

Chaos workers consume their own queue, so killing one never touches the session's worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from celery import Celery
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from escalations.models import UNDECIDED_STATUSES, Decision
from tests.conftest import ROOT, _service_env
from tests.support import processes
from workflows import engine, outbox
from workflows.models import (
    TERMINAL_RUN_STATUSES,
    Effect,
    RunStatus,
    StepRun,
    StepStatus,
    WorkflowRun,
)
from workflows.state import verify_chain


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: kills workers, Redis and database connections (select with -m chaos)"
    )


free_port = processes.free_port

# The drain's largest batch (ENGINE_BATCH_MAX) every chaos worker runs with: each case that
# runs a cluster runs once per value (issue 20: the suite passes unchanged at B=1 and
# B=100). CHAOS_BATCH_MAX="32" (say) runs each once, at that value.
BATCH_MAXES = tuple(
    int(b) for b in os.environ.get("CHAOS_BATCH_MAX", "1,100").split(",") if b.strip()
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only the cases with workers (a `cluster`, or one of their own pointed at by `sends_to`):
    # the rest never drain, and running them twice would only cost time.
    if {"cluster", "sends_to"} & set(metafunc.fixturenames):
        metafunc.parametrize(
            "batch_max", BATCH_MAXES, indirect=True, scope="module", ids=lambda b: f"B{b}"
        )


@pytest.fixture(scope="module")
def batch_max(request: pytest.FixtureRequest) -> Iterator[int]:
    """This module's ENGINE_BATCH_MAX: in every Cluster's workers' environment, and in this
    process's settings (the reconciler thread's engine calls)."""
    from django.test import override_settings

    value = int(getattr(request, "param", BATCH_MAXES[0]))
    Cluster.batch_max = value
    with override_settings(ENGINE_BATCH_MAX=value):
        yield value
    Cluster.batch_max = None


@pytest.fixture(autouse=True)
def _this_cases_batch_max(request: pytest.FixtureRequest) -> None:
    """A case that runs no cluster (not parametrized) builds none at a leftover B, and its
    report says none."""
    callspec = getattr(request.node, "callspec", None)
    Cluster.batch_max = callspec.params.get("batch_max") if callspec is not None else None


class Cluster:
    """Workers on one queue and broker, and the test process's sends pointed at them."""

    # Set by the `batch_max` fixture: every cluster a case builds runs its workers at it.
    batch_max: int | None = None

    def __init__(self, *, redis_url: str, log_dir: Path, django_db_blocker: Any) -> None:
        self.redis_url = redis_url
        self.queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.log_dir = log_dir
        with django_db_blocker.unblock():
            self.env = {
                **_service_env(),
                "REDIS_URL": redis_url,
                "CELERY_QUEUE": self.queue,
            }
        if self.batch_max is not None:
            self.env["ENGINE_BATCH_MAX"] = str(self.batch_max)
        self.app = Celery("chaos-sender", broker=redis_url, set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True
        self.app.conf.broker_transport_options = {"visibility_timeout": 1200}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def send(self, task: str, args: list[Any], countdown: float = 0) -> None:
        self.app.send_task(
            task, args=args, queue=self.queue, countdown=countdown if countdown > 0 else None
        )

    def start_worker(self, *, concurrency: int = 2) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"worker-{len(self.workers)}-{self.queue}.log"
        proc = processes.start_worker(
            env=self.env,
            log_path=log_path,
            concurrency=concurrency,
            name=f"chaos{len(self.workers)}-{self.queue}@%h",
            timeout=40,
            new_session=True,  # its own process group: killed whole at teardown
        )
        self.workers.append(proc)
        self.logs.append(log_path)
        return proc

    @contextlib.contextmanager
    def supervised(self) -> Iterator[list[int]]:
        """Restart a worker that exits on its own, as systemd or Kubernetes would: kombu's
        Redis transport can crash the worker's main process when the broker vanishes while
        it restores unacked messages (AttributeError on a closed connection, kombu#970).
        Yields the exit codes of the workers it replaced."""
        replaced: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                current = self.workers[-1]
                log = self.logs[-1].read_bytes()
                # Exited, or stopped consuming after the crash and hanging on its way out.
                if current.poll() is not None or b"Error on stopping Hub" in log:
                    code = current.poll()
                    replaced.append(code if code is not None else -1)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(current.pid, signal.SIGKILL)
                    self.start_worker(concurrency=3)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield replaced
        finally:
            stop.set()
            thread.join(60)

    def stop(self) -> None:
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.app.close()


@pytest.fixture(scope="module")
def cluster(
    batch_max: int,
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    c = Cluster(
        redis_url=os.environ["REDIS_URL"],
        log_dir=tmp_path_factory.mktemp("chaos"),
        django_db_blocker=django_db_blocker,
    )
    c.start_worker(concurrency=3)
    yield c
    c.stop()


class Reconciler:
    """What beat does, every half second: re-enqueue stalled runs, wake due ones, take over
    runs whose lease ran out, relay the outbox. Runs in a thread of the test process,
    sending through the cluster.

    `stall_seconds`: the reconciler's stall limit (default: the test settings' 2 s; give it
    production's 60 s to show recovery does not come from it). `broker`: a redis client of
    the cluster's broker, for the relay's restarted-broker check (workflows.tasks.relay_outbox),
    run every `relay_every` seconds as beat does."""

    def __init__(
        self,
        *,
        stall_seconds: float | None = None,
        broker: Any = None,
        relay_every: float = 0.5,
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []
        self.stall_seconds = stall_seconds
        self.broker = broker
        self.relay_every = relay_every
        self.resent = 0
        self.resent_at: float | None = None

    def _loop(self) -> None:
        next_relay = 0.0
        try:
            while not self._stop.wait(0.5):
                try:
                    # What a worker does before each task: a connection whose backend was
                    # terminated is replaced, not reused forever.
                    connection.close_if_unusable_or_obsolete()
                    engine.reconcile_runs(stall_seconds=self.stall_seconds)
                    engine.wake_runs()
                    # Beat's take-over-expired: a run whose worker died (its main process
                    # crashed with the broker, say) is moved on once its lease runs out.
                    engine.take_over_expired()
                    if time.monotonic() >= next_relay:
                        next_relay = time.monotonic() + self.relay_every
                        if self.broker is not None and outbox.broker_restarted(self.broker):
                            self.resent += engine.resend_lost(before=timezone.now())
                            self.resent_at = time.monotonic()
                        outbox.relay_due(grace_seconds=1)
                except Exception as exc:  # a killed broker: keep going, like beat does
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def __enter__(self) -> Reconciler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def sends_to(request: pytest.FixtureRequest, batch_max: int) -> Any:
    """Point this process's task sends (outbox relay, decisions, the reconciler) at a cluster,
    and the drain's wake-up flag (outbox.wake_drain) with them: it must be the one the
    cluster's workers clear, on their broker under their queue's name, or a flag set here
    and never cleared there silences every start's wake-up until it expires."""
    patches: list[Any] = []
    clients: list[Any] = []

    def point(c: Cluster) -> Cluster:
        client = redis.Redis.from_url(c.redis_url, socket_timeout=5)
        clients.append(client)
        for p in (
            mock.patch("workflows.outbox.send", side_effect=c.send),
            mock.patch("workflows.outbox._broker_client", return_value=client),
            mock.patch(
                "workflows.outbox._drain_flag",
                side_effect=lambda task=outbox.DRAIN: f"{outbox.DRAIN_FLAG}:{c.queue}:{task}",
            ),
            mock.patch(
                "workflows.tasks.enqueue_advance",
                side_effect=lambda run_id, countdown=0: c.send(
                    outbox.ADVANCE, [str(run_id)], countdown
                ),
            ),
        ):
            p.start()
            patches.append(p)
        return c

    yield point
    for p in patches:
        p.stop()
    for client in clients:
        client.close()


@pytest.fixture
def reconciler() -> Iterator[Reconciler]:
    with Reconciler() as r:
        yield r


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def running_step(run: WorkflowRun, name: str, timeout: float = 20) -> StepRun:
    return wait_until(
        lambda: (
            StepRun.objects.filter(run=run, name=name, status=StepStatus.RUNNING)
            .exclude(lease_owner="")
            .first()
        ),
        timeout,
        f"{name} to be running",
    )


def owner_pid(step: StepRun) -> int:
    return int(step.lease_owner.split(":")[1])


def settle(runs: list[WorkflowRun], timeout: float = 60) -> None:
    """Wait until every run is terminal or legitimately waiting."""

    def settled() -> bool:
        return all(_settled(WorkflowRun.objects.get(pk=r.pk)) for r in runs)

    try:
        wait_until(settled, timeout, "the runs to settle")
    except AssertionError:
        stuck = [
            f"{r.workflow} {r.pk} {r.status}: "
            + " | ".join(r.trace.values_list("message", flat=True))
            for r in WorkflowRun.objects.filter(pk__in=[r.pk for r in runs])
            if not _settled(r)
        ]
        raise AssertionError("runs did not settle:\n" + "\n".join(stuck)) from None


def _settled(run: WorkflowRun) -> bool:
    if run.status in TERMINAL_RUN_STATUSES:
        return True
    if run.status != RunStatus.WAITING:
        return False
    undecided = run.actions.filter(escalation__status__in=UNDECIDED_STATUSES).exists()
    sleeping = run.wake_at is not None and run.wake_at > timezone.now()
    return undecided or sleeping


def assert_invariants() -> None:
    """Every run terminal or legitimately waiting; at most one ledger row per effect key; at
    most one decision per escalation; no run or step running past its lease; chains intact.

    Runs still moving (e.g. a follow-up just started) get time to settle first."""
    settle(list(WorkflowRun.objects.all()), timeout=30)
    now = timezone.now()
    for run in WorkflowRun.objects.all():
        assert _settled(run), f"run {run.pk} is {run.status}, neither finished nor waiting"
        assert verify_chain(run) == [], f"run {run.pk}: {verify_chain(run)}"
    assert not WorkflowRun.objects.filter(
        Q(status=RunStatus.RUNNING) & ~Q(lease_owner="") & Q(lease_expires_at__lt=now)
    ).exists(), "a run is running past its lease"
    assert not StepRun.objects.filter(
        status=StepStatus.RUNNING, lease_expires_at__lt=now
    ).exists(), "a step is running past its lease"
    assert not StepRun.objects.filter(
        status=StepStatus.RUNNING, run__status__in=TERMINAL_RUN_STATUSES
    ).exists(), "a finished run still has a running step"
    dupes = Effect.objects.values("key").annotate(n=Count("id")).filter(n__gt=1)
    assert not dupes.exists(), f"effects applied twice: {list(dupes)}"
    per_step = (
        Effect.objects.filter(run__isnull=False)
        .values("run", "step_name", "key")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert not per_step.exists()
    two_decisions = Decision.objects.values("escalation").annotate(n=Count("id")).filter(n__gt=1)
    assert not two_decisions.exists(), "an escalation was decided twice"


# --- what each case measured ----------------------------------------------------------------


@dataclass
class CaseReport:
    case: str
    started: int
    finished: int = 0
    duplicates: int = 0
    lost: int = 0
    recovery_seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"chaos {self.case}: runs started={self.started} finished={self.finished} "
            f"duplicates={self.duplicates} lost={self.lost} "
            f"recovery={self.recovery_seconds:.1f}s{extra}"
        )


REPORTS: list[CaseReport] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    terminalreporter.section("chaos: runs, duplicates, losses, recovery after the fault")
    for report in REPORTS:
        terminalreporter.write_line(report.line())
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "chaos-summary.json").write_text(
        json.dumps([asdict(r) for r in REPORTS], indent=2, default=str)
    )


def settled_count(runs: list[WorkflowRun]) -> int:
    return len(runs) - len(unsettled([r.pk for r in runs]))


def unsettled(run_ids: list[Any]) -> list[WorkflowRun]:
    moving = WorkflowRun.objects.filter(pk__in=run_ids).exclude(status__in=TERMINAL_RUN_STATUSES)
    return [r for r in moving if not _settled(r)]


def measure(
    case: str, runs: list[WorkflowRun], *, fault_ended: float, timeout: float = 120, **notes: Any
) -> CaseReport:
    """Wait for `runs` to settle; record how long after `fault_ended` (a monotonic time) the
    last one did, what finished, what was applied twice, what was lost. Prints the line and
    keeps it for the session summary; asserts nothing was duplicated or lost."""
    ids = [r.pk for r in runs]
    deadline = time.monotonic() + timeout
    left = unsettled(ids)
    # The work still to do when the fault ended: a batch can settle no faster than its backlog.
    notes = {"unsettled_at_fault_end": len(left), "batch_max": Cluster.batch_max, **notes}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = unsettled(ids)
    settled_at = time.monotonic()
    report = CaseReport(
        case=case,
        started=len(ids),
        finished=len(ids) - len(left),
        duplicates=(
            Effect.objects.values("key").annotate(n=Count("id")).filter(n__gt=1).count()
            + Decision.objects.values("escalation").annotate(n=Count("id")).filter(n__gt=1).count()
        ),
        lost=len(left),
        recovery_seconds=max(0.0, settled_at - fault_ended),
        # A callable note is read now, after the runs settled.
        notes={k: v() if callable(v) else v for k, v in notes.items()},
    )
    REPORTS.append(report)
    print(report.line())
    assert report.duplicates == 0, report.line()
    assert report.lost == 0, (
        report.line()
        + "\n"
        + "\n".join(
            f"{r.pk} {r.status}: " + " | ".join(r.trace.values_list("message", flat=True))
            for r in left[:5]
        )
    )
    return report


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a celery worker's pool children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
