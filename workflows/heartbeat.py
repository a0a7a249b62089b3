"""Leases kept alive by a heartbeat, so a dead worker's run is taken over within seconds.

A step attempt's lease used to last its whole timeout (a minute or more), and the run's as
long again: a worker SIGKILLed mid-step left its run stalled until both ran out and the
minute-long reconciler noticed (60-107 s). Now, in a worker process (`start`, called as
each prefork child starts), a lease is short — `RUN_LEASE_SECONDS` — and a daemon thread
renews the leases of the attempts this process is running every quarter of that, never
past the attempt's own deadline (its timeout: the commit fence still refuses a late
commit). When the process dies the renewals stop; the leases run out within
`RUN_LEASE_SECONDS`, and beat's `take_over_expired` (every `TAKEOVER_EVERY_SECONDS`)
re-enqueues the run, whose next coordinator takes it over.

A renewal is one conditional UPDATE per row (still ours, still unexpired): it never revives
a lease that ran out, so a worker that was only slow (a long GC pause, its database away)
loses its claim exactly as a dead one does, and the fence rolls back its work.

Outside worker processes (embedded mode's threads, steps run inline by tests) nothing
renews, and a lease lasts the attempt's timeout as before.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from . import leases
from .models import StepRun, StepStatus, WorkflowRun

log = logging.getLogger(__name__)

# A run's lease outlives its running step's by this much (engine.LEASE_MARGIN_SECONDS).
RUN_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class Held:
    run_id: uuid.UUID
    step_id: int
    token: str
    deadline: datetime  # the attempt's timeout: no renewal goes past it


_lock = threading.Lock()
_held: dict[str, Held] = {}
_started = threading.Event()


def lease_seconds() -> float:
    return leases.lease_seconds()


def interval_seconds() -> float:
    return lease_seconds() / 4


def enabled() -> bool:
    """True in a process whose heartbeat thread runs (a worker process)."""
    return _started.is_set()


def first_lease(timeout_seconds: float) -> float:
    """How long a fresh claim's lease lasts: short where a heartbeat renews it."""
    return min(timeout_seconds, lease_seconds()) if enabled() else timeout_seconds


def start() -> None:
    """Start this process's heartbeat thread (once). Call after fork, in the child."""
    if _started.is_set():
        return
    _started.set()
    threading.Thread(target=_loop, name="lease-heartbeat", daemon=True).start()


@contextmanager
def holding(*, run_id: uuid.UUID, step_id: int, token: str, deadline: datetime) -> Iterator[None]:
    """Renew the attempt's step lease (and the run's, when the same token holds it: an inline
    step's coordinator) while the block runs."""
    if not enabled():
        yield
        return
    with _lock:
        _held[token] = Held(run_id=run_id, step_id=step_id, token=token, deadline=deadline)
    try:
        yield
    finally:
        with _lock:
            _held.pop(token, None)


def beat(now: datetime | None = None) -> int:
    """Renew every lease this process holds; how many rows were renewed."""
    with _lock:
        held = list(_held.values())
    renewed = 0
    for h in held:
        now = now or timezone.now()
        until = now + timedelta(seconds=lease_seconds())
        renewed += StepRun.objects.filter(
            pk=h.step_id, status=StepStatus.RUNNING, lease_owner=h.token, lease_expires_at__gt=now
        ).update(lease_expires_at=min(until, h.deadline))
        renewed += WorkflowRun.objects.filter(
            pk=h.run_id, lease_owner=h.token, lease_expires_at__gt=now
        ).update(lease_expires_at=min(until, h.deadline + RUN_MARGIN))
    return renewed


def _loop() -> None:
    while True:
        time.sleep(interval_seconds())
        with _lock:
            idle = not _held
        try:
            if idle:
                # Nothing to renew: do not keep a database connection open for nothing.
                connection.close()
                continue
            beat()
        except Exception:
            # A missed renewal only shortens the lease; the next one may succeed.
            log.warning("lease heartbeat failed", exc_info=True)
            try:
                connection.close()
            except Exception:
                log.debug("closing the heartbeat's connection failed", exc_info=True)
