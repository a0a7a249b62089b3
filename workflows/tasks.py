"""Celery tasks: load by id, call the engine. Every task is safe to run twice."""

from __future__ import annotations

import uuid

from celery import shared_task
from django.conf import settings

from . import engine


@shared_task(name="workflows.tasks.advance_run")
def advance_run(run_id: str) -> None:
    engine.advance_run(run_id=uuid.UUID(run_id))


@shared_task(name="workflows.tasks.reconcile_runs")
def reconcile_runs() -> int:
    return engine.reconcile_runs(stall_seconds=settings.RUN_STALL_SECONDS)


def enqueue_advance(run_id: uuid.UUID | str, countdown: float = 0) -> None:
    """Send after commit only (callers use transaction.on_commit): the id, nothing else."""
    advance_run.apply_async(args=(str(run_id),), countdown=countdown)
