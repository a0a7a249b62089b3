"""Actions settle one by one: each decision becomes its outcome as soon as it commits.

A step that proposed several actions does not wait for all of them before acting on any: it
waits with `Wait(each=True)`, the engine resumes it as soon as one is settled, and
`settle_actions` turns each decided action into what it means —

- approved (or allowed alone): executed once, through the effect ledger; an approved
  irreversible action first waits out its undo window (`Action.execute_after`, a database
  timer the engine's wake-up reads);
- rejected: the action type's declared fallback runs (a customer reply's ticket is handed to
  a named person), recorded in the ledger like any effect;
- answered (Respond): returned to the step, whose agent revises its proposal;
- still with a person, or in its undo window: the step waits again, for those only.

`record_decision` is what the deciding transaction (escalations) calls: it tells the engine
what the person said, in fields the engine reads without knowing escalations, and sends the
run on, after commit, on the queue workers serve first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from . import outbox
from .actions import execute_action
from .models import Action, ActionStatus, Effect, TraceKind
from .tools import get_action_type

if TYPE_CHECKING:
    from .engine import StepContext

log = logging.getLogger(__name__)


def undo_window_seconds(action_type: str) -> float:
    """How long an approved action of this type waits before it runs: 0 when reversible."""
    tool = get_action_type(action_type)
    if tool.reversible:
        return 0.0
    override = getattr(settings, "UNDO_WINDOW_SECONDS", None)
    return float(override if override is not None else tool.undo_seconds)


def record_decision(
    *,
    action: Action,
    verdict: str,
    approved: bool,
    text: str,
    by: str,
    owner: str,
    now: datetime,
) -> list[str]:
    """Precondition: inside the transaction that decides `action` (its status already set by
    the caller). Sets what the engine reads and returns the fields to save with the status;
    makes the run go on: at once, a waiting run is marked ready in this transaction and the
    drain woken after commit; otherwise (a run not waiting, or held; an approved
    irreversible action, at the end of its undo window) its resume is sent after commit on
    the priority queue. Never lost: the reconciler finds a decided run that did not
    resume."""
    action.feedback = {"verdict": verdict, "text": text, "by": by, "owner": owner}
    window = undo_window_seconds(action.action_type) if approved and action.run_id else 0.0
    action.execute_after = now + timedelta(seconds=window) if window else None
    if action.run_id is not None and not window and _ready_to_resume(action.run_id, now):
        # Queued in this transaction: the drain claims it, resumes before starts.
        transaction.on_commit(lambda: outbox.wake_drain(outbox.DRAIN_RESUMES), robust=True)
    elif action.run_id is not None:
        # A moment after the window, so the resume finds it over (the database timer, read
        # by the wake-up beat, is the backstop if this message is lost).
        # No outbox row: the decided action is what the reconciler finds (a waiting run none
        # of whose actions waits on a person) should the send be lost.
        outbox.send_after_commit(
            outbox.RESUME, str(action.run_id), countdown=window + 0.2 if window else 0
        )
    return ["feedback", "execute_after"]


# The run's row only if it is waiting and nobody holds it: never waited for, so the deciding
# transaction takes no lock out of the engine's order (a step settling its actions holds
# them, then takes the run's row) and can never deadlock with it.
_READY_TO_RESUME = """
UPDATE workflows_workflowrun SET ready_at = %s
WHERE id = (
    SELECT id FROM workflows_workflowrun WHERE id = %s AND status = 'waiting'
    FOR NO KEY UPDATE SKIP LOCKED
)
"""


def _ready_to_resume(run_id: Any, now: datetime) -> bool:
    """Mark a waiting run ready for the drain, in the deciding transaction; False if it is
    not waiting or someone holds its row (a coordinator committing, a cancel): then the
    resume is sent as a task, and whoever holds the row re-reads the actions under it."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cur:
        cur.execute(_READY_TO_RESUME, [now, run_id])
        return cur.rowcount == 1


def record_undo(*, action: Action) -> list[str]:
    """Precondition: the action's row locked, approved, inside its undo window, not
    executed. Back to waiting for a person; returns the fields to save."""
    action.status = ActionStatus.ESCALATED
    action.approved_payload = None
    action.execute_after = None
    action.feedback = {}
    return ["status", "approved_payload", "execute_after", "feedback"]


@dataclass
class Settled:
    executed: list[Action] = field(default_factory=list)
    failed: list[Action] = field(default_factory=list)
    # Rejected or blocked, with no fallback declared: nothing happened.
    skipped: list[Action] = field(default_factory=list)
    # The fallback ran: (action, the person who took it over).
    handed_off: list[tuple[Action, str]] = field(default_factory=list)
    # A person answered in words: the agent revises (or, out of rounds, hands off).
    answered: list[Action] = field(default_factory=list)
    # Still with a person, or approved and in its undo window.
    pending: list[Action] = field(default_factory=list)

    @property
    def pending_ids(self) -> tuple[str, ...]:
        return tuple(str(a.pk) for a in self.pending)


def settle_actions(ctx: StepContext, actions: Iterable[Action]) -> Settled:
    """Settle what can be settled now. Precondition: inside the step attempt's transaction
    (its lease fences the commit). Each action's row is locked first, so an undo racing the
    end of the window either wins (the action is back with a person) or finds it executed."""
    now = timezone.now()
    ids = [a.pk for a in actions]
    out = Settled()
    if not ids:
        return out
    locked = Action.objects.select_for_update(of=("self",)).filter(pk__in=ids)
    for action in locked.order_by("created_at"):
        action.run = ctx.run
        status = action.status
        if status in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
            if action.in_undo_window(now):
                out.pending.append(action)
                continue
            action = execute_action(action=action)
            status = action.status
        if status == ActionStatus.EXECUTED:
            out.executed.append(action)
        elif status == ActionStatus.FAILED:
            out.failed.append(action)
        elif status in (ActionStatus.ESCALATED, ActionStatus.PROPOSED):
            out.pending.append(action)
        elif status == ActionStatus.REJECTED and action.answered:
            out.answered.append(action)
        elif status == ActionStatus.REJECTED:
            who = action.feedback.get("by") or "a reviewer"
            reason = f"{who} rejected it" + (
                f": {action.feedback['text']}" if action.feedback.get("text") else ""
            )
            owner = run_fallback(ctx, action, reason=reason)
            if owner is None:
                out.skipped.append(action)
            else:
                out.handed_off.append((action, owner))
        else:
            out.skipped.append(action)
    return out


def run_fallback(ctx: StepContext, action: Action, *, reason: str) -> str | None:
    """The action type's declared fallback, once (effect ledger), traced; returns who took
    the work over, or None when the type declares no fallback."""
    tool = get_action_type(action.action_type)
    if tool.fallback is None:
        return None
    fallback = tool.fallback
    owner = str(action.feedback.get("owner") or "") or "the support team"
    payload: dict[str, Any] = action.payload
    name = f"fallback-{action.pk}"
    if Effect.objects.filter(key=f"{ctx.run.pk}:{ctx.step.name}:{name}").exists():
        return owner  # an earlier round of the step ran it (and traced it)
    result = ctx.effect(name, lambda key: fallback(payload, owner))
    ctx.trace(
        TraceKind.EXECUTED,
        f"{tool.fallback_label or 'fallback'} instead of {action.action_type}: "
        f"{owner} now owns it ({reason})",
        action=str(action.pk),
        owner=owner,
        result=result,
    )
    return owner
