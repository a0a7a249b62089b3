"""Outside events into runs: the customer replied, a payment cleared.

An event is written into the run's state (`workspace.events`; a customer's reply into the
conversation too) as a versioned write, then wakes every step waiting for that kind of event
(`Wait(events=...)`) — the run's own and those of the runs it started (a ticket's follow-up
waits for the customer's reply to the ticket). The step wakes on the event or its deadline,
whichever comes first: the deadline is the database timer beat scans, the event marks the
step in the same transaction and sends the run on through the outbox.

Delivery is idempotent with a key: the same key twice records and wakes once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import outbox
from .actions import record_trace
from .models import StepRun, StepStatus, TraceKind, WorkflowRun
from .state import update_state

CUSTOMER_REPLIED = "customer_replied"
EVENT_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_EVENTS_KEPT = 200


@dataclass
class Delivered:
    run: WorkflowRun
    kind: str
    # Steps woken (this run's and its child runs').
    woke: int
    # The key was delivered before: nothing recorded or woken this time.
    duplicate: bool = False


def deliver_event(
    *,
    run_id: uuid.UUID | str,
    kind: str,
    data: dict[str, Any] | None = None,
    actor: str = "",
    key: str = "",
) -> Delivered:
    """Record an outside event on a run and wake what waits for it.

    Raises WorkflowRun.DoesNotExist for an unknown run, ValidationError for a bad kind or,
    for `customer_replied`, a missing `data.text`. A finished run still takes the event
    (its follow-ups may be waiting for it).
    """
    data = dict(data or {})
    if not EVENT_KIND.match(kind):
        raise ValidationError({"kind": "lowercase letters, digits, '_', '.', '-'; 1-64 long"})
    text = str(data.get("text", "")).strip()
    if kind == CUSTOMER_REPLIED and not text:
        raise ValidationError({"data": "a customer_replied event needs data.text"})
    at = timezone.now().isoformat()
    event = {"kind": kind, "data": data, "at": at, "by": actor, **({"key": key} if key else {})}
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update(no_key=True).get(pk=run_id)
        events = (run.state.get("workspace") or {}).get("events") or []
        if key and any(e.get("key") == key for e in events if isinstance(e, dict)):
            return Delivered(run=run, kind=kind, woke=0, duplicate=True)
        changes = [
            (
                "workspace",
                lambda ws: {**ws, "events": [*ws.get("events", []), event][-MAX_EVENTS_KEPT:]},
            )
        ]
        if kind == CUSTOMER_REPLIED:
            changes.append(
                (
                    "conversation",
                    lambda c: {
                        **c,
                        "messages": [
                            *c.get("messages", []),
                            {"role": "customer", "content": text[:4000], "at": at},
                        ],
                    },
                )
            )
        update_state(
            run=run,
            changes=changes,
            reason=f"event {kind}",
            actor=actor,
            current=(run.state, run.state_version),
            locked=True,
        )
        record_trace(
            run=run,
            kind=TraceKind.OBSERVED,
            actor=actor,
            message=f"event {kind}" + (f": {text[:200]}" if text else ""),
            data={"event": kind, "key": key} if key else {"event": kind},
        )
        woke = _wake_waiting(run, kind, at)
    return Delivered(run=run, kind=kind, woke=woke)


def _wake_waiting(run: WorkflowRun, kind: str, at: str) -> int:
    """Mark the steps waiting for `kind` (this run's and its children's) and send their runs
    on. Precondition: inside the delivering transaction. The step rows are locked, so a
    coordinator round deciding about them sees the mark or has already moved them on."""
    # The kinds a step waits for are matched here, not in SQL: SQLite (embedded mode) has no
    # JSON `contains` lookup, and a run and its children have only a few waiting steps.
    steps = [
        step
        for step in StepRun.objects.select_for_update(no_key=True)
        .filter(status=StepStatus.WAITING)
        .filter(run_id__in=[run.pk, *run.children.values_list("pk", flat=True)])
        if kind in ((step.waiting_for or {}).get("events") or [])
    ]
    for step in steps:
        step.waiting_for = {**(step.waiting_for or {}), "event": {"kind": kind, "at": at}}
        step.save(update_fields=["waiting_for"])
    for run_id in {s.run_id for s in steps}:
        outbox.enqueue(outbox.RESUME, str(run_id))
    return len(steps)
