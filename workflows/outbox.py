"""Task sends that must not be lost: written with the change that needs them, relayed after.

`enqueue` writes an Outbox row inside the caller's transaction and registers an after-commit
relay of that row. If the process dies between commit and send (or the broker is down), the
row stays and `relay_due` — run by beat — sends it later. Every task is idempotent, so the
rare double send (sent, then the process died before deleting the row) changes nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from config.celery import app

from .models import Outbox

log = logging.getLogger(__name__)

ADVANCE = "workflows.tasks.advance_run"
RUN_STEP = "workflows.tasks.run_step"


def enqueue(task: str, *args: str, countdown: float = 0) -> Outbox:
    """Precondition: inside the transaction whose commit makes the task necessary."""
    row = Outbox.objects.create(
        task=task,
        args=list(args),
        available_at=timezone.now() + timedelta(seconds=countdown),
    )
    # The row as written, not read back: the beat relay only takes rows older than its
    # grace period, so this relay is nearly always alone with it (a rare double send is
    # harmless, see above).
    transaction.on_commit(lambda: relay(row.pk, row=row))
    return row


def send(task: str, args: list[Any], countdown: float = 0) -> None:
    app.send_task(task, args=args, countdown=countdown if countdown > 0 else None)


def relay(row_id: int, *, row: Outbox | None = None) -> bool:
    """Send one row and delete it. False if it was gone (already relayed) or the send failed.
    `row`: the row as its writer holds it (not read again)."""
    if row is None:
        row = Outbox.objects.filter(pk=row_id).first()
    if row is None:
        return False
    countdown = (row.available_at - timezone.now()).total_seconds()
    try:
        send(row.task, row.args, countdown)
    except Exception as exc:
        # The broker is down: the row stays for the beat relay; nothing is lost.
        log.warning("outbox %s not sent (%s); beat will retry", row_id, exc)
        Outbox.objects.filter(pk=row_id).update(
            attempts=row.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        return False
    Outbox.objects.filter(pk=row_id).delete()
    return True


def relay_due(*, grace_seconds: float, limit: int = 500) -> int:
    """Send rows the after-commit relay did not: older than `grace_seconds`.

    Rows are claimed with SKIP LOCKED so two relays never send the same row at once.
    """
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    sent = 0
    with transaction.atomic():
        rows = list(
            Outbox.objects.select_for_update(skip_locked=True)
            .filter(created_at__lt=cutoff)
            .order_by("id")[:limit]
        )
        done: list[int] = []
        for row in rows:
            countdown = (row.available_at - timezone.now()).total_seconds()
            try:
                send(row.task, row.args, countdown)
            except Exception as exc:
                log.warning("outbox relay stopped at %s: %s", row.pk, exc)
                Outbox.objects.filter(pk=row.pk).update(
                    attempts=row.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
                )
                break
            done.append(row.pk)
            sent += 1
        Outbox.objects.filter(pk__in=done).delete()
    return sent
