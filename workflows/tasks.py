"""Celery tasks: load by id, call the engine. Every task is safe to run twice, or at once."""

from __future__ import annotations

import uuid

from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings
from django.utils import timezone

from . import engine, heartbeat, outbox


@worker_process_init.connect
def _start_heartbeat(**kwargs: object) -> None:
    """Each prefork child renews the leases of the steps it runs (workflows.heartbeat)."""
    heartbeat.start()


@shared_task(name="workflows.tasks.advance_run")
def advance_run(run_id: str) -> None:
    engine.advance_run(run_id=uuid.UUID(run_id))


@shared_task(name="workflows.tasks.resume_run")
def resume_run(run_id: str) -> None:
    """advance_run on the priority queue (settings.CELERY_TASK_ROUTES): what a person decided
    must not wait behind every step already queued."""
    engine.advance_run(run_id=uuid.UUID(run_id))


@shared_task(name="workflows.tasks.drain_runs")
def drain_runs() -> int:
    """Woken once for any number of runs made ready (outbox.wake_drain): claims them in
    batches (engine.drain_runs)."""
    return engine.drain_runs()


@shared_task(name="workflows.tasks.drain_resumes")
def drain_resumes() -> int:
    """Woken by decisions (settle.record_decision), on the priority queue: claims the runs
    people decided, nothing else (engine.drain_runs)."""
    return engine.drain_runs(starts=False)


@shared_task(name="workflows.tasks.run_step")
def run_step(run_id: str, step_name: str) -> None:
    engine.run_step(run_id=uuid.UUID(run_id), step_name=step_name)


@shared_task(name="workflows.tasks.run_model_step")
def run_model_step(run_id: str, step_name: str) -> None:
    """run_step on the model queue (settings.CELERY_TASK_ROUTES): a step that calls a model
    runs alone, in the model pool, never inline in a drain's batch."""
    engine.run_step(run_id=uuid.UUID(run_id), step_name=step_name)


@shared_task(name="workflows.tasks.reconcile_runs")
def reconcile_runs() -> int:
    return engine.reconcile_runs(stall_seconds=settings.RUN_STALL_SECONDS)


@shared_task(name="workflows.tasks.take_over_expired")
def take_over_expired() -> int:
    return engine.take_over_expired()


@shared_task(name="workflows.tasks.wake_runs")
def wake_runs() -> int:
    return engine.wake_runs()


@shared_task(name="workflows.tasks.relay_outbox")
def relay_outbox() -> int:
    # This task is the first thing to run once beat and a worker are back on a restarted
    # broker: what the restart lost goes out again now, not after the reconciler's stall.
    if outbox.broker_restarted():
        engine.resend_lost(before=timezone.now())
        # Every send before the restart is lost: no after-commit relay is worth waiting for.
        return outbox.relay_due(grace_seconds=0)
    return outbox.relay_due(grace_seconds=settings.OUTBOX_GRACE_SECONDS)


def enqueue_resume(run_id: uuid.UUID | str, countdown: float = 0) -> None:
    """enqueue_advance on the queue workers serve first (after a person's decision)."""
    resume_run.apply_async(args=(str(run_id),), countdown=countdown)


def enqueue_advance(run_id: uuid.UUID | str, countdown: float = 0) -> None:
    """Send after commit only (callers use transaction.on_commit): the id, nothing else.

    Where losing the send would lose work, write an outbox row instead (workflows.outbox).
    """
    advance_run.apply_async(args=(str(run_id),), countdown=countdown)
