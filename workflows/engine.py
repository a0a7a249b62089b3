"""The engine: advance a run step by step, durably.

Each step runs in its own transaction holding the run's row lock, so two workers handed the
same run (a redelivery, the reconciler, a decision arriving) serialise; the second finds the
step already done and moves on. Step output, state and any enqueue commit together.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from .llm import ModelClient, get_model
from .models import RunStatus, StepRun, StepStatus, TraceKind, WorkflowRun
from .specs import UnknownWorkflow, Wait, get_spec

log = logging.getLogger(__name__)

MAX_STEPS_PER_TASK = 50


@dataclass
class StepContext:
    run: WorkflowRun
    step: StepRun
    model: ModelClient

    def trace(self, kind: TraceKind, message: str, **data: Any) -> None:
        from .actions import record_trace

        record_trace(run=self.run, kind=kind, message=message, step_name=self.step.name, data=data)

    def output_of(self, step_name: str) -> dict[str, Any]:
        value = self.run.state.get(step_name)
        return value if isinstance(value, dict) else {}


def advance_run(*, run_id: uuid.UUID) -> None:
    """Run steps until the run finishes, waits or fails. Safe to call any number of times."""
    for _ in range(MAX_STEPS_PER_TASK):
        if not _advance_one_step(run_id):
            return
    # A long plan: hand the rest to a fresh task rather than hog this worker.
    _enqueue_after_commit(run_id)


def _enqueue_after_commit(run_id: uuid.UUID, countdown: float = 0) -> None:
    from .tasks import enqueue_advance

    transaction.on_commit(lambda: enqueue_advance(run_id, countdown=countdown))


def _advance_one_step(run_id: uuid.UUID) -> bool:
    """Lock the run and run its next step. Returns True when another step may follow."""
    from .actions import finish_run, record_trace

    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.is_terminal:
            return False
        try:
            spec = get_spec(run.workflow, run.workflow_version)
        except UnknownWorkflow as exc:
            finish_run(run=run, status=RunStatus.FAILED, error=f"{exc} in this worker")
            return False
        steps = {s.name: s for s in run.steps.all()}
        todo = next(
            (steps[s.name] for s in spec.steps if steps[s.name].status != StepStatus.SUCCEEDED),
            None,
        )
        if todo is None:
            finish_run(run=run, status=RunStatus.SUCCEEDED)
            return False

        now = timezone.now()
        resuming = todo.status == StepStatus.WAITING
        if run.status != RunStatus.RUNNING:
            if run.status == RunStatus.WAITING:
                record_trace(
                    run=run, kind=TraceKind.SYSTEM, message="run resumed", step_name=todo.name
                )
            run.status = RunStatus.RUNNING
        run.updated_at = now
        run.save(update_fields=["status", "updated_at"])
        if not resuming:
            todo.attempts += 1
            todo.started_at = todo.started_at or now
        todo.status = StepStatus.RUNNING
        todo.save(update_fields=["status", "attempts", "started_at"])

        step_spec = spec.step(todo.name)
        ctx = StepContext(run=run, step=todo, model=get_model())
        try:
            # A savepoint: a step that raises leaves none of its own writes behind.
            with transaction.atomic():
                result = step_spec.run(ctx)
        except Exception as exc:
            log.exception("step %s of run %s failed", todo.name, run.pk)
            todo.error = f"{type(exc).__name__}: {exc}"
            record_trace(
                run=run,
                kind=TraceKind.ERROR,
                step_name=todo.name,
                message=f"attempt {todo.attempts} failed: {todo.error}",
            )
            if todo.attempts >= step_spec.max_attempts:
                todo.status = StepStatus.FAILED
                todo.finished_at = now
                todo.save(update_fields=["status", "error", "finished_at"])
                finish_run(
                    run=run,
                    status=RunStatus.FAILED,
                    error=f"step {todo.name} failed after {todo.attempts} attempts: {todo.error}",
                )
            else:
                todo.status = StepStatus.PENDING
                todo.save(update_fields=["status", "error"])
                _enqueue_after_commit(run.pk, countdown=2**todo.attempts)
            return False

        if isinstance(result, Wait):
            todo.status = StepStatus.WAITING
            todo.save(update_fields=["status"])
            run.status = RunStatus.WAITING
            run.updated_at = timezone.now()
            run.save(update_fields=["status", "updated_at"])
            record_trace(
                run=run,
                kind=TraceKind.SYSTEM,
                step_name=todo.name,
                message=f"waiting: {result.reason}",
            )
            return False

        todo.status = StepStatus.SUCCEEDED
        todo.output = result
        todo.error = ""
        todo.finished_at = timezone.now()
        todo.save(update_fields=["status", "output", "error", "finished_at"])
        run.state = {**run.state, todo.name: result}
        run.state_version += 1
        run.save(update_fields=["state", "state_version"])
        return True


def reconcile_runs(*, stall_seconds: int) -> int:
    """Re-enqueue runs that should be moving but are not (a lost enqueue, a dead worker)."""
    from escalations.models import UNDECIDED_STATUSES

    cutoff = timezone.now() - timedelta(seconds=stall_seconds)
    stalled = list(
        WorkflowRun.objects.filter(
            status__in=[RunStatus.PENDING, RunStatus.RUNNING], updated_at__lt=cutoff
        ).values_list("pk", flat=True)[:500]
    )
    # A waiting run whose escalations are all decided missed its resume.
    stalled += list(
        WorkflowRun.objects.filter(status=RunStatus.WAITING, updated_at__lt=cutoff)
        .exclude(actions__escalation__status__in=UNDECIDED_STATUSES)
        .values_list("pk", flat=True)[:500]
    )
    from .tasks import enqueue_advance

    for run_id in stalled:
        enqueue_advance(run_id)
    return len(stalled)
