"""A worker SIGKILLed mid-step: its run is taken over once the step's heartbeat lease runs
out (RUN_LEASE_SECONDS after the last renewal), not when the step's two-minute timeout would
have — with only beat's take-over sweep running, not the minute-long reconciler."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tests.chaos.conftest import (
    Cluster,
    assert_invariants,
    measure,
    owner_pid,
    running_step,
    wait_until,
)
from tests.conftest import wait_for_run
from workflows import engine
from workflows.actions import start_run
from workflows.models import RunStatus, StepRun, TraceEvent

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

LEASE = timedelta(seconds=settings.RUN_LEASE_SECONDS)


@contextlib.contextmanager
def take_over_sweep() -> Iterator[None]:
    """Beat's take-over task every half second, and nothing else of beat's."""
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.wait(0.5):
                with contextlib.suppress(Exception):
                    engine.take_over_expired()
        finally:
            connection.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_a_killed_workers_run_is_taken_over_when_its_heartbeat_lease_runs_out(
    cluster, sends_to, agent, tmp_path, django_db_blocker
):
    c = sends_to(
        Cluster(redis_url=cluster.redis_url, log_dir=tmp_path, django_db_blocker=django_db_blocker)
    )
    try:
        # Two workers, as in production: the survivor is ready when the other dies.
        workers = [c.start_worker(concurrency=1), c.start_worker(concurrency=1)]
        run = start_run(workflow="long_step", input={"hold": 90})
        step = running_step(run, "hold", timeout=60)
        doomed = next(w for w in workers if w.pid == _parent_of(owner_pid(step)))
        claimed = step.lease_expires_at
        assert claimed is not None
        # The heartbeat renews the short lease while the step runs.
        wait_until(
            lambda: StepRun.objects.get(pk=step.pk).lease_expires_at > claimed,
            30,
            "the heartbeat to renew the step's lease",
        )
        os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool child, mid-step
        killed_at = timezone.now()
        killed = time.monotonic()
        doomed.wait(10)
        last_lease = StepRun.objects.get(pk=step.pk).lease_expires_at
        with take_over_sweep():
            measure("worker-killed-taken-over", [run], fault_ended=killed, timeout=90)
            wait_for_run(run, RunStatus.SUCCEEDED, timeout=90)
        lost = TraceEvent.objects.get(run=run, message__contains="lost its worker")
        step.refresh_from_db()
        assert step.attempts == 2
        # Lease arithmetic: the dead attempt's lease lasted at most RUN_LEASE_SECONDS past
        # its last renewal, and the take-over came after it ran out, far before the timeout
        # the old lease lasted (claim + 120 s).
        assert last_lease is not None
        assert lost.created_at >= last_lease
        first_claim = claimed - LEASE
        assert lost.created_at < first_claim + timedelta(seconds=step.timeout_seconds)
        # Reported, not asserted (a loaded machine's wall clock): see the lease arithmetic.
        print(
            f"taken over {(lost.created_at - killed_at).total_seconds():.1f} s after the kill, "
            f"{(lost.created_at - last_lease).total_seconds():.1f} s after the dead worker's "
            f"lease ran out (RUN_LEASE_SECONDS={LEASE.total_seconds():g})"
        )
        assert_invariants()
    finally:
        c.stop()


def _parent_of(pid: int) -> int:
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[1])
