"""A dead worker's run is taken over within seconds, by lease arithmetic on a fake clock: a
worker's claim gets a short lease that its heartbeat renews up to the step's timeout; once
the renewals stop, beat's take-over sweep re-enqueues the run as soon as the lease ran out,
and the next coordinator takes it over."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.conftest import ROOT
from workflows import engine, heartbeat
from workflows.actions import start_run
from workflows.models import RunStatus, StepRun, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=settings.RUN_LEASE_SECONDS)


class FakeClock:
    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timezone, "now", fake)
    return fake


@pytest.fixture
def in_a_worker(monkeypatch) -> None:
    """As in a prefork child whose heartbeat runs; the test beats by hand, on its clock."""
    started = threading.Event()
    started.set()
    monkeypatch.setattr(heartbeat, "_started", started)


@pytest.fixture
def enqueued(monkeypatch) -> list[str]:
    sent: list[str] = []
    monkeypatch.setattr(
        "workflows.tasks.enqueue_advance", lambda run_id, countdown=0: sent.append(str(run_id))
    )
    return sent


def _claimed(run: WorkflowRun) -> engine.Claim:
    claim = engine._coordinate(run.pk, engine.new_owner(), acquire=True)
    assert claim is not None and claim.step.name == "hold"
    return claim


def test_a_workers_claim_gets_a_short_lease_renewed_up_to_its_timeout(
    clock, in_a_worker, agent, enqueued
):
    run = start_run(workflow="long_step", input={})
    claim = _claimed(run)
    claimed_at = clock.now
    step = StepRun.objects.get(pk=claim.step.pk)
    run.refresh_from_db()
    # Short, though the step may take two minutes.
    assert step.lease_expires_at == claimed_at + LEASE
    assert run.lease_expires_at == claimed_at + LEASE
    assert claim.deadline == claimed_at + timedelta(seconds=120)

    with heartbeat.holding(
        run_id=run.pk, step_id=step.pk, token=claim.token, deadline=claim.deadline
    ):
        # Every quarter lease, for the whole two minutes: the lease follows, never past the
        # timeout, and nothing is taken over meanwhile.
        while clock.now + timedelta(seconds=heartbeat.interval_seconds()) < claim.deadline:
            now = clock.advance(heartbeat.interval_seconds())
            assert heartbeat.beat(now) == 2
            step.refresh_from_db()
            run.refresh_from_db()
            assert step.lease_expires_at == min(now + LEASE, claim.deadline)
            assert run.lease_expires_at == min(now + LEASE, claim.deadline + heartbeat.RUN_MARGIN)
            assert engine.take_over_expired(now=now) == 0
    step.refresh_from_db()
    assert step.lease_expires_at == claim.deadline  # the fence refuses a commit after it
    assert enqueued == []


def test_a_run_whose_worker_died_is_taken_over_when_its_lease_runs_out(
    clock, in_a_worker, agent, enqueued
):
    run = start_run(workflow="long_step", input={"hold": 0})
    claim = _claimed(run)
    with heartbeat.holding(
        run_id=run.pk, step_id=claim.step.pk, token=claim.token, deadline=claim.deadline
    ):
        for _ in range(8):
            heartbeat.beat(clock.advance(heartbeat.interval_seconds()))
    died_at = clock.now  # the last renewal; then the worker was SIGKILLed
    taken_over_by = died_at + LEASE

    clock.advance((LEASE - timedelta(milliseconds=1)).total_seconds())
    assert engine.take_over_expired() == 0  # still within the dead worker's lease
    assert clock.advance(0.001) == taken_over_by
    assert engine.take_over_expired() == 1
    assert enqueued == [str(run.pk)]

    # The re-enqueued advance takes the run over and retries the lost attempt at once, long
    # before the step's two-minute timeout.
    engine.advance_run(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    step = StepRun.objects.get(pk=claim.step.pk)
    assert step.status == StepStatus.SUCCEEDED
    assert step.attempts == 2
    assert run.trace.filter(message__contains="lost its worker").exists()
    assert taken_over_by < claim.deadline


def test_an_async_step_whose_worker_died_is_found_too(clock, in_a_worker, agent, enqueued):
    """A step run by another worker's task (no coordinator holds the run) is found by the
    step's own expired lease."""
    run = start_run(workflow="long_step", input={})
    claim = _claimed(run)
    # The coordinator let go (as after dispatching an async step); the step's worker died.
    WorkflowRun.objects.filter(pk=run.pk).update(lease_owner="", lease_expires_at=None)
    clock.advance(LEASE.total_seconds())
    assert engine.take_over_expired() == 1
    assert enqueued == [str(run.pk)]
    assert StepRun.objects.get(pk=claim.step.pk).status == StepStatus.RUNNING


def test_a_decided_run_whose_drain_died_is_taken_over_too(clock, agent, enqueued):
    """A drain claims a decided (waiting) run's lease before it coordinates it: if its worker
    dies in between, the run is waiting with a dead lease, and the take-over finds it as it
    finds a running one (not the reconciler's minute-long stall sweep)."""
    run = start_run(workflow="long_step", input={})
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING, ready_at=clock.now)
    claimed = engine._claim_ready("dead-drain", clock.now + LEASE, [], 2, starts=False)
    assert claimed == [(run.pk, RunStatus.WAITING)]
    assert engine.take_over_expired() == 0  # its drain's lease is live
    clock.advance(LEASE.total_seconds())
    assert engine.take_over_expired() == 1
    assert enqueued == [str(run.pk)]
    # A waiting run at rest holds no lease: it is never taken over.
    WorkflowRun.objects.filter(pk=run.pk).update(lease_owner="", lease_expires_at=None)
    enqueued.clear()
    assert engine.take_over_expired() == 0


def test_without_a_heartbeat_a_lease_lasts_the_steps_timeout(clock, agent):
    """Embedded mode's threads and inline runs renew nothing: leases are as long as before."""
    run = start_run(workflow="long_step", input={})
    claim = _claimed(run)
    step = StepRun.objects.get(pk=claim.step.pk)
    assert step.lease_expires_at == clock.now + timedelta(seconds=120)


def test_the_shipped_defaults_take_a_dead_workers_run_over_within_15_seconds():
    """RUN_LEASE_SECONDS after the last renewal, plus at most one take-over interval."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUN_LEASE_SECONDS", "TAKEOVER_EVERY_SECONDS", "DJANGO_SETTINGS_MODULE")
    }
    code = (
        "from config.settings import services as s; "
        "print(s.RUN_LEASE_SECONDS + s.TAKEOVER_EVERY_SECONDS); "
        "print(s.CELERY_BEAT_SCHEDULE['take-over-expired']['schedule'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    bound, every = float(out[0]), float(out[1])
    assert bound <= 15 - 3, "room for the task's own latency under load"
    assert every <= 2
