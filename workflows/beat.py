"""Beat's scans: the reconciler (runs that should be moving and are not) and the wake-ups."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from . import leases
from .gate import gate
from .models import RunStatus, StepRun, StepStatus, WorkflowRun
from .outbox import ADVANCE
from .outbox import enqueue as outbox_enqueue


def reconcile_runs(*, stall_seconds: float | None = None) -> int:
    """Re-enqueue runs that should be moving and are not: a lost enqueue, a dead worker (its
    lease expired), a decided escalation whose resume was lost, a deadline passed."""
    # Imported here: workflows.tasks imports the engine, which imports this module.
    from .tasks import enqueue_advance

    now = timezone.now()
    stall = stall_seconds if stall_seconds is not None else leases.stall_seconds()
    cutoff = now - timedelta(seconds=stall)
    no_live_lease = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    live_step = Exists(
        StepRun.objects.filter(
            run=OuterRef("pk"), status=StepStatus.RUNNING, lease_expires_at__gt=now
        )
    )
    stalled = set(
        WorkflowRun.objects.filter(no_live_lease, status__in=[RunStatus.PENDING, RunStatus.RUNNING])
        .filter(updated_at__lt=cutoff)
        .exclude(live_step)
        .values_list("pk", flat=True)[:500]
    )
    # A waiting run whose escalations are all decided missed its resume.
    stalled |= set(
        WorkflowRun.objects.filter(status=RunStatus.WAITING, updated_at__lt=cutoff)
        .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=now))
        .exclude(gate().awaiting_people())
        .values_list("pk", flat=True)[:500]
    )
    stalled |= set(
        WorkflowRun.objects.filter(
            deadline_at__lte=now,
            status__in=[RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING],
        ).values_list("pk", flat=True)[:500]
    )
    for run_id in stalled:
        enqueue_advance(run_id)
    return len(stalled)


def wake_runs(*, limit: int = 500) -> int:
    """Runs whose wake-up time came: clear it and enqueue them (outbox, same transaction)."""
    with transaction.atomic():
        due = list(
            WorkflowRun.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=RunStatus.WAITING, wake_at__lte=timezone.now())
            .values_list("pk", flat=True)[:limit]
        )
        now = timezone.now()
        WorkflowRun.objects.filter(pk__in=due).update(wake_at=None, updated_at=now)
        # The run's column is the timer; its sleeping steps are due when it fires (an operator
        # may have moved it earlier).
        for step in StepRun.objects.filter(
            run_id__in=due, status=StepStatus.WAITING, waiting_for__has_key="until"
        ):
            step.waiting_for = {**(step.waiting_for or {}), "until": now.isoformat()}
            step.save(update_fields=["waiting_for"])
        for run_id in due:
            outbox_enqueue(ADVANCE, str(run_id))
    return len(due)
