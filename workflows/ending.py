"""Ending a run from inside the engine: failed, dead-lettered, finished. Each expects the
run's row lock, held by the engine's transaction."""

from __future__ import annotations

from django.utils import timezone

from .actions import finish_run, record_trace
from .models import DeadLetter, RunStatus, StepRun, StepStatus, TraceKind, WorkflowRun


def dead_letter(run: WorkflowRun, step: StepRun, error: str) -> None:
    """Precondition: run and step rows locked."""
    now = timezone.now()
    step.status = StepStatus.FAILED
    step.error = error
    step.finished_at = now
    step.lease_owner = ""
    step.lease_expires_at = None
    step.save(update_fields=["status", "error", "finished_at", "lease_owner", "lease_expires_at"])
    DeadLetter.objects.create(run=run, step_name=step.name, attempts=step.attempts, error=error)
    record_trace(
        run=run,
        kind=TraceKind.ERROR,
        step_name=step.name,
        message=f"{step.name} dead-lettered after {step.attempts} attempt(s)",
    )
    fail_locked(run, f"step {step.name} failed after {step.attempts} attempts: {error}")


def fail_locked(run: WorkflowRun, error: str) -> None:
    finish_locked(run, RunStatus.FAILED, error)


def finish_locked(
    run: WorkflowRun,
    status: RunStatus,
    error: str = "",
    *,
    all_done: bool = False,
    pending: list[str] | None = None,
) -> None:
    """Precondition: run row locked. Steps still queued or pending are cancelled with it
    (`all_done`: the caller saw every step done, there are none). `pending`: see finish_run."""
    if not all_done:
        StepRun.objects.filter(
            run=run, status__in=[StepStatus.PENDING, StepStatus.QUEUED, StepStatus.WAITING]
        ).update(status=StepStatus.CANCELLED, lease_owner="", lease_expires_at=None)
    run.lease_owner = ""
    run.lease_expires_at = None
    run.wake_at = None
    finish_run(
        run=run,
        status=status,
        error=error,
        also=["lease_owner", "lease_expires_at", "wake_at"],
        pending=pending,
    )
