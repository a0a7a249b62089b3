"""Beat's scans: the reconciler (runs that should be moving and are not), the take-over of
runs whose worker stopped renewing its leases, the wake-ups, and the re-send after a broker
restarted empty."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from . import leases
from .gate import gate
from .models import RunStatus, StepRun, StepStatus, WorkflowRun
from .outbox import ADVANCE, RESUME, step_task
from .outbox import enqueue as outbox_enqueue
from .outbox import enqueue_many as outbox_enqueue_many

log = logging.getLogger(__name__)


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


def take_over_expired(*, now: datetime | None = None, limit: int = 500) -> int:
    """Re-enqueue runs whose holder stopped renewing: a run lease or a running step's lease
    that ran out (workflows.heartbeat), with no live coordinator. Beat runs this every
    TAKEOVER_EVERY_SECONDS, so a dead worker's run is taken over within RUN_LEASE_SECONDS
    plus that; the next advance_run takes the lease and requeues the lost attempt."""
    # Imported here: workflows.tasks imports the engine, which imports this module.
    from .tasks import enqueue_advance

    now = now or timezone.now()
    dead_step = Exists(
        StepRun.objects.filter(
            run=OuterRef("pk"), status=StepStatus.RUNNING, lease_expires_at__lte=now
        )
    )
    # Waiting too: a drain takes a decided run's lease before it coordinates it (a waiting
    # run at rest holds none), so a drain that died leaves a waiting run with a dead lease.
    expired = WorkflowRun.objects.filter(
        status__in=[RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING],
    ).filter((~Q(lease_owner="") & Q(lease_expires_at__lte=now)) | dead_step)
    live = Q(lease_expires_at__gt=now) & ~Q(lease_owner="")
    stalled = list(expired.exclude(live).values_list("pk", flat=True)[:limit])
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
        # Only the column is cleared: each sleeping step keeps its own deadline, and the
        # round the resume starts wakes the steps whose deadline has come (engine._wait_over)
        # and sets the column again to the earliest of the rest. (Rewriting every waiting
        # step's deadline to now here once ended a day's sleep when a minute's ran out.)
        WorkflowRun.objects.filter(pk__in=due).update(wake_at=None, updated_at=now)
        for run_id in due:
            # A wake-up is often a person's decision coming due (an undo window ended): on
            # the queue workers serve first.
            outbox_enqueue(RESUME, str(run_id))
    return len(due)


def resend_lost(*, before: datetime, limit: int = 2000) -> int:
    """The broker lost every message sent before `before` (it restarted empty): send again,
    through the outbox, what each run was waiting on — a queued step's `run_step`, and an
    `advance_run` for every run that should be moving and that no live lease or step is
    moving (reconcile_runs' tests, without its stall). A run that a live lease or step was
    moving gets an `advance_run` too, delayed by a lease's length: what its holder sent while
    the broker was away may be lost with the rest, and that run was found only by the
    reconciler's stall (60 s; the chaos case measured 67 s once). A message that was not lost
    after all arrives twice, which every task tolerates. Returns how many sends it queued."""
    now = timezone.now()
    no_live_lease = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    live_step = Exists(
        StepRun.objects.filter(
            run=OuterRef("pk"), status=StepStatus.RUNNING, lease_expires_at__gt=now
        )
    )
    with transaction.atomic():
        steps = _queued_before(before, limit)
        StepRun.objects.filter(pk__in=[s.pk for s in steps]).update(dispatched_at=now)
        sends: list[tuple[str, list[Any]]] = [_run_step(s) for s in steps]
        runs = set(
            WorkflowRun.objects.filter(
                no_live_lease,
                status__in=[RunStatus.PENDING, RunStatus.RUNNING],
                updated_at__lt=before,
            )
            .exclude(live_step)
            .values_list("pk", flat=True)[:limit]
        )
        runs |= set(
            WorkflowRun.objects.filter(status=RunStatus.WAITING, updated_at__lt=before)
            .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=now))
            .exclude(gate().awaiting_people())
            .values_list("pk", flat=True)[:limit]
        )
        sends += [(ADVANCE, [str(run_id)]) for run_id in runs]
        moving = set(
            WorkflowRun.objects.filter(
                status__in=[RunStatus.PENDING, RunStatus.RUNNING], updated_at__lt=before
            )
            .exclude(pk__in=runs)
            .values_list("pk", flat=True)[:limit]
        )
        # After the leases live now have run out (or been given back): a no-op for a run
        # whose holder's sends got through.
        later = leases.lease_seconds() + 1
        deferred: list[tuple[str, list[Any]]] = [(ADVANCE, [str(run_id)]) for run_id in moving]
        outbox_enqueue_many(sends + deferred, later=later, later_from=len(sends))
    if steps or runs or moving:
        log.warning(
            "broker restarted empty: re-sent %s step(s) and %s run(s), %s moving run(s) in %gs",
            len(steps),
            len(runs),
            len(moving),
            later,
        )
    return len(steps) + len(runs) + len(moving) + _resend_skipped_steps(before, limit)


def _queued_before(before: datetime, limit: int) -> list[StepRun]:
    """Queued steps dispatched before `before` that no transaction holds, locked, with their
    run's plan (which task runs each: `_run_step`)."""
    return list(
        StepRun.objects.select_for_update(skip_locked=True, no_key=True, of=("self",))
        .select_related("run")
        .filter(status=StepStatus.QUEUED, dispatched_at__lt=before)
        .only("pk", "run_id", "name", "run__plan")[:limit]
    )


def _run_step(step: StepRun) -> tuple[str, list[Any]]:
    return (step_task(step.run.plan, step.name), [str(step.run_id), step.name])


def _resend_skipped_steps(before: datetime, limit: int, *, within: float = 3.0) -> int:
    """Queued steps resend_lost skipped because a transaction held them (a worker's
    advance_run locks a run's steps): once it lets go, a step still queued from before the
    restart is sent again too. Nothing else would: an advance re-sends a queued step only
    once its dispatch is RUN_STALL_SECONDS old (the chaos case waited 67 s for one)."""
    sent = 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not StepRun.objects.filter(status=StepStatus.QUEUED, dispatched_at__lt=before).exists():
            break
        time.sleep(0.2)
        with transaction.atomic():
            steps = _queued_before(before, limit)
            StepRun.objects.filter(pk__in=[s.pk for s in steps]).update(
                dispatched_at=timezone.now()
            )
            outbox_enqueue_many([_run_step(s) for s in steps])
        sent += len(steps)
    if sent:
        log.warning("broker restarted empty: re-sent %s step(s) a transaction held", sent)
    return sent
