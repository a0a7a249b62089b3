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

`record_decision` is what the deciding transaction (escalations) calls, holding the run's row
(`lock_run`, its first lock): it tells the engine what the person said, in fields the engine
reads without knowing escalations, and marks a waiting run ready for the drain of decided
runs, woken after commit (a flag, not a message per decision).
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
from .models import Action, ActionStatus, Effect, RunStatus, TraceKind, WorkflowRun
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


def lock_run(run_id: Any, *, ready_at: datetime | None = None) -> str | None:
    """The deciding transaction's first lock: the run's row (FOR NO KEY UPDATE, waited
    for), before the escalation's and the action's — the engine's order too (a round and a
    step's commit take the run's row, then read the actions afresh under it), so a decision
    and a round of its run are serialised: whichever commits second sees the other. With
    `ready_at`, also marks the run ready for the drain if it is waiting (the caller is sure
    to decide, or to roll back). Returns the run's status (None: no such run)."""
    if connection.vendor != "postgresql":
        # Embedded mode's SQLite: one writer at a time, the transaction is the lock.
        status = WorkflowRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        if ready_at is not None and status == RunStatus.WAITING:
            WorkflowRun.objects.filter(pk=run_id).update(ready_at=ready_at)
        return status
    with connection.cursor() as cur:
        if ready_at is None:
            cur.execute(_LOCK_RUN, [run_id])
        else:
            cur.execute(_LOCK_AND_MARK_RUN, [ready_at, run_id])
        row = cur.fetchone()
    return row[0] if row else None


_LOCK_RUN = "SELECT status FROM workflows_workflowrun WHERE id = %s FOR NO KEY UPDATE"
# One statement: the lock, and the mark that makes the drain claim a waiting run.
_LOCK_AND_MARK_RUN = """
UPDATE workflows_workflowrun
SET ready_at = CASE WHEN status = 'waiting' THEN %s ELSE ready_at END
WHERE id = %s RETURNING status
"""


def resumes_at_once(*, action_type: str, approved: bool) -> bool:
    """Whether a decision of this kind sends its run on at once (no undo window to wait out)."""
    return not (approved and undo_window_seconds(action_type))


def record_decision(
    *,
    action: Action,
    verdict: str,
    approved: bool,
    text: str,
    by: str,
    owner: str,
    now: datetime,
    run_status: str | None = None,
    marked: bool = False,
) -> list[str]:
    """Precondition: inside the transaction that decides `action` (its status already set by
    the caller) and, for an action of a run, holding the run's row lock (`lock_run`, taken
    before the escalation's: `run_status` is what it returned; `marked`: it also marked the
    run ready, or the caller's deciding statement will, exactly when this would — waiting,
    no undo window). Sets what the engine reads and returns the fields to save with the status;
    makes the run go on:

    - waiting: marked ready in this transaction (`ready_at`) and the drain woken after
      commit (one flag, no message per decision): the drain claims it before any start;
    - not waiting (a step or a round in flight): nothing to send — whatever is in flight
      coordinates again under the run's row lock, after this commits, and reads the action
      afresh there;
    - an approved irreversible action: at the end of its undo window, a resume sent after
      commit on the priority queue (the database timer, read by the wake-up beat, and the
      reconciler are the backstops should it be lost)."""
    action.feedback = {"verdict": verdict, "text": text, "by": by, "owner": owner}
    window = undo_window_seconds(action.action_type) if approved and action.run_id else 0.0
    action.execute_after = now + timedelta(seconds=window) if window else None
    if action.run_id is None:
        return ["feedback", "execute_after"]
    if window:
        # A moment after the window, so the resume finds it over. No outbox row: the
        # decided action is what the reconciler finds should the send be lost.
        outbox.send_after_commit(outbox.RESUME, str(action.run_id), countdown=window + 0.2)
    elif run_status == RunStatus.WAITING:
        if not marked:
            WorkflowRun.objects.filter(pk=action.run_id, status=RunStatus.WAITING).update(
                ready_at=now
            )
        # Queued in this transaction: the drain claims it, resumes before starts.
        transaction.on_commit(lambda: outbox.wake_drain(outbox.DRAIN_RESUMES), robust=True)
    return ["feedback", "execute_after"]


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
    (its lease fences the commit). Each decided action's row is locked first, so an undo
    racing the end of the window either wins (the action is back with a person) or finds it
    executed.

    An action still with a person is not locked: a decision takes the run's row before the
    action's, and this attempt takes the run's row only at its commit — holding the
    action's until then would close a cycle. It is left pending; should a decision commit
    meanwhile, the commit's round reads it afresh under the run's row and resumes the step."""
    now = timezone.now()
    ids = [a.pk for a in actions]
    out = Settled()
    if not ids:
        return out
    locked = list(
        Action.objects.select_for_update(of=("self",))
        .filter(pk__in=ids)
        .exclude(status=ActionStatus.ESCALATED)
        .order_by("created_at")
    )
    if len(locked) < len(ids):
        seen = {a.pk for a in locked}
        # Read unlocked, whatever it is by now: waited for again, and settled by a later
        # round of the step, under its lock.
        out.pending += [
            a
            for a in Action.objects.filter(pk__in=[i for i in ids if i not in seen]).order_by(
                "created_at"
            )
        ]
    for action in locked:
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
