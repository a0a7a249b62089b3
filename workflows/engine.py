"""The engine: advance a run through its plan, durably, at least once, with effects once.

Locking and leases. Nothing holds a row lock while a step runs (a step may call a model for
seconds). Instead:

- the *coordinator* (`advance_run`) takes the run's lease (owner token + expiry, decided under
  the run's row lock in its first round), decides in short rounds what is ready, dispatches
  async steps (outbox rows, relayed after commit) and runs sync steps inline, one at a time,
  in plan order;
- a *step attempt* is claimed in a round (attempt counter bumped there, committed before the
  step runs, with its own lease = its timeout), then the step body runs in a transaction
  that holds no contended lock; its result, its state change and any follow-up enqueue are
  committed together behind a fence: the step row is updated only if this attempt still
  holds an unexpired lease, so a worker that was presumed dead, timed out or cancelled can
  never commit (its whole transaction, effects ledger included, rolls back);
- the short lock taken at commit is `FOR NO KEY UPDATE` on the run row: it serialises the
  commits of one run's steps (so a join sees every sibling's result) and does not conflict
  with the key-share locks a running step's inserts take on the run;
- an inline step's commit is also the next round: under that same lock it claims the next
  sync step (or lets the lease go), so a sync step costs one transaction, not three;
- a drain's batch goes in group rounds (`_drive_batch`): one transaction per round for every
  run of the batch, runs in order of id, so B runs pay one commit per round. Within it a
  batch-mate's step does hold the row locks of the runs before it until the round commits
  (milliseconds: a step that calls a model server never runs in a batch, see `_dispatch`);
  a run whose part raises is set aside and the round redone without it.

Anyone who wants a run advanced while another worker holds its lease bumps `pokes` (a count
for operators) and leaves it to the holder: the holder only ever lets go in a round, under
the row lock, after reading the steps and actions afresh, so it sees whatever the nudge was
for; a nudge that waited on that lock finds the lease free. A lease that expires (its holder was
SIGKILLed, lost its database, hung) is taken over by the next `advance_run`, which the
beat-driven reconciler sends; the attempt the dead worker used is counted, and after
`max_attempts` the step goes to dead-letter and the run to failed.

Before a run resumes — after a decision, a wake-up or a crash — it verifies its state (version
chain, the awaited actions, the objective and plan) and records the check in the trace; on a
mismatch it refuses, and a person decides (a `resume_run` escalation).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import heartbeat, hotsql, outbox
from .actions import (
    buffered_trace,
    record_trace,
)
from .beat import reconcile_runs, resend_lost, take_over_expired, wake_runs
from .ending import dead_letter, fail_locked, finish_locked
from .leases import LEASE_MARGIN_SECONDS, lease_seconds, new_owner, stall_seconds
from .llm import get_model
from .models import (
    TERMINAL_RUN_STATUSES,
    Action,
    ActionStatus,
    RunStatus,
    StepMode,
    StepRun,
    StepStatus,
    TraceKind,
    WorkflowRun,
)
from .outbox import ADVANCE, RUN_MODEL_STEP, RUN_STEP
from .outbox import enqueue as outbox_enqueue
from .outcomes import run_outcome
from .recovery import RESUME_RUN, actions_with_effect, attention_resolved, recovery_check
from .specs import Sleep, UnknownWorkflow, Wait, get_spec
from .state import StateView, normalise, remember_digest, update_state
from .state import chains as state_chains
from .step_context import StepContext

log = logging.getLogger(__name__)

# Moved to modules of their own; named here too, for callers of engine.* (tasks, tests, specs).
__all__ = [
    "RESUME_RUN",
    "StepContext",
    "advance_run",
    "drain_runs",
    "new_owner",
    "reconcile_runs",
    "resend_lost",
    "run_step",
    "take_over_expired",
    "wake_runs",
]

MAX_ROUNDS_PER_TASK = 50


class LeaseLost(Exception):
    """This attempt no longer owns its step (taken over, cancelled, run finished)."""


class StepTimedOut(Exception):
    pass


class CriterionFailed(Exception):
    """The step returned, but its output does not meet the step's success criterion."""


@dataclass
class Claim:
    run: WorkflowRun
    step: StepRun
    token: str
    resumed: bool
    woken: bool
    deadline: datetime | None = None  # the attempt's timeout: its lease never outlives it
    unsaved: bool = False  # the claim's step row is still to be written (`_end_round`)


# --- the drain: runs ready to start, claimed in batches -----------------------------------

# A batch never grows past settings.ENGINE_BATCH_MAX; nor does a drain go on past
# DRAIN_SECONDS: then its batch's runs finish the steps they claimed and go to fresh tasks,
# and a fresh drain claims what is left (a step that calls a model for seconds must not keep
# its batch-mates waiting: see `_dispatch` for the model steps that never run in a batch).
DRAIN_SECONDS = 5.0

_CLAIM_READY = """
WITH resumes AS (
    SELECT id FROM workflows_workflowrun
    WHERE ready_at <= %s AND status = 'waiting' AND lease_owner = ''
      AND NOT (id = ANY(%s::uuid[]))
    ORDER BY ready_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED
), starts AS (
    SELECT id FROM workflows_workflowrun
    WHERE status = 'pending' AND lease_owner = '' AND NOT (id = ANY(%s::uuid[]))
    ORDER BY created_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE workflows_workflowrun SET lease_owner = %s, lease_expires_at = %s, ready_at = NULL
WHERE id IN (
    SELECT id FROM resumes
    UNION ALL
    (SELECT id FROM starts LIMIT greatest(%s - (SELECT count(*) FROM resumes), 0))
)
RETURNING id, status
"""


def drain_runs(
    *,
    starts: bool = True,
    max_batch: int | None = None,
    seconds: float = DRAIN_SECONDS,
) -> int:
    """The ready queue: a waiting run a person's decision marked ready (`ready_at`, see
    settle.record_decision), then a pending run, whose lease is free: its row is the durable
    wake-up (no message per run). Resumes are claimed first. Claims in batches — one UPDATE … WHERE
    id IN (SELECT … FOR NO KEY UPDATE SKIP LOCKED LIMIT B), in autocommit, takes each run's
    lease before any runs — then drives the batch under those leases, one transaction per
    round for all of its runs (`_drive_batch`).

    B starts at 2 (at most settings.ENGINE_BATCH_MAX) and doubles while batches come back
    full (a full batch also wakes a second drain, so the other workers join in). A batch
    that is not full ends the drain: all that was ready when it claimed is taken, and
    whatever commits later woke a drain of its own (the flag is cleared first). Without
    `starts`, decided runs only (the drain a decision wakes, on the priority queue).
    Returns how many runs it coordinated."""
    task = outbox.DRAIN if starts else outbox.DRAIN_RESUMES
    # What a start wakes, and a decision: this drain claims both, or decided runs only.
    wakes = (outbox.DRAIN, outbox.DRAIN_RESUMES) if starts else (outbox.DRAIN_RESUMES,)
    outbox.drain_woken(task)  # first: what commits from now on sends a fresh wake-up
    started = time.monotonic()
    if max_batch is None:
        max_batch = settings.ENGINE_BATCH_MAX
    batch, done = min(2, max_batch), 0
    seen: list[uuid.UUID] = []

    def claim(token: str, n: int) -> list[uuid.UUID]:
        nonlocal done
        expires = timezone.now() + timedelta(seconds=lease_seconds())
        ids = [r[0] for r in _claim_ready(token, expires, seen, n, starts=starts)]
        if ids and len(ids) == n:
            outbox.wake_drain(task)  # a backlog: another worker may as well claim some
        seen.extend(ids)
        done += len(ids)
        return ids

    while True:
        if time.monotonic() - started > seconds:
            # This worker has had its turn: a fresh task claims what is left.
            outbox.wake_drain(task)
            return done
        token = new_owner()
        ids = claim(token, batch)
        if ids:
            _drive_batch(
                dict.fromkeys(ids, AGAIN),
                token,
                until=started + seconds,
                # What became ready meanwhile joins the batch at its next round, in the
                # first half of the drain's time (the batch's runs then have the rest to
                # reach a pause rather than be handed on).
                refill=Refill(
                    claim=functools.partial(claim, token),
                    most=max_batch,
                    until=started + seconds / 2,
                    wanted=functools.partial(outbox.drain_wanted, *wakes),
                ),
            )
        if len(ids) < batch:
            return done
        batch = min(max_batch, batch * 2)


def _claim_ready(
    token: str, expires: datetime, seen: list[uuid.UUID], batch: int, *, starts: bool = True
) -> list[tuple[uuid.UUID, str]]:
    """Take the leases of up to `batch` ready runs, decided ones first; (id, status) each."""
    now = timezone.now()
    if hotsql.enabled():
        found = hotsql.rows(
            _CLAIM_READY, [now, seen, batch, seen, batch if starts else 0, token, expires, batch]
        )
        return [(r[0], r[1]) for r in found]
    # Embedded mode's SQLite (one writer at a time, no SKIP LOCKED): read, then take each
    # lease with a conditional UPDATE; one another drain took first is left to it.
    free = WorkflowRun.objects.filter(lease_owner="").exclude(pk__in=seen)
    ready = list(
        free.filter(ready_at__lte=now, status=RunStatus.WAITING)
        .order_by("ready_at")
        .values_list("pk", "status")[:batch]
    )
    if starts:
        ready += list(
            free.filter(status=RunStatus.PENDING)
            .order_by("created_at")
            .values_list("pk", "status")[: batch - len(ready)]
        )
    return [
        (pk, status)
        for pk, status in ready
        if WorkflowRun.objects.filter(pk=pk, lease_owner="").update(
            lease_owner=token, lease_expires_at=expires, ready_at=None
        )
    ]


# --- the coordinator ---------------------------------------------------------------------


def advance_run(*, run_id: uuid.UUID) -> None:
    """Coordinate the run until nothing more can start now. Safe to call any number of times,
    from any number of workers at once: one holds the lease, the others leave a poke.

    Sync steps chain: the transaction that commits one step also coordinates the next round
    and claims the next sync step, so a run of n inline steps costs n + 1 transactions."""
    _drive(run_id, new_owner(), ACQUIRE)


def _drive(run_id: uuid.UUID, token: str, first: _Again) -> None:
    """The coordinator's loop for one run, from its first round (ACQUIRE: one that takes the
    lease; AGAIN: one under a lease this task already took as `token`). Its errors are the
    caller's (the task's: Celery logs them; the lease was let go)."""
    _drive_batch({run_id: first}, token, raise_errors=True)


@dataclass(frozen=True)
class Refill:
    """How a drain's batch takes in runs that became ready while it ran (`_drive_batch`):
    `claim(n)` takes the leases of up to n more (as the batch's token) and returns their ids;
    the batch holds at most `most` runs, and takes none in after `until` (time.monotonic).
    `wanted()`: whether anything became ready since (a wake-up flag is up): else no claim is
    tried (an idle engine's lone run pays no statement per round for it)."""

    claim: Callable[[int], list[uuid.UUID]]
    most: int
    until: float
    wanted: Callable[[], bool]


# A batch takes in no more runs once fewer rounds than this are left to it: those it took
# would be handed on rather than paused.
REFILL_ROUNDS_LEFT = 10


def _drive_batch(
    items: dict[uuid.UUID, Claim | _Again],
    token: str,
    *,
    until: float | None = None,
    raise_errors: bool = False,
    refill: Refill | None = None,
) -> None:
    """Drive runs whose leases this task holds as `token` (a drain's batch, or one run) in
    group rounds: each round is one transaction in which every run, in order of id (the lock
    order: runs by id, then each run's steps), does what it has next — a claimed step's body
    and commit (which chains the run's next round and claims its next sync step) or a round
    of coordination — so a batch of B runs pays one commit per round, not B. Claims are
    still committed before their bodies run: a claim made in a round runs in the next one.

    A run whose part raises is set aside: the round's transaction rolls back (batch-mates'
    steps with it: they are run again, under the same claims) and is redone without it; the
    run goes on alone, in transactions of its own, as before batching (`_execute` records a
    failed attempt, `_coordinate` lets its lease go). A commit that fails as a whole sends
    every run of the round alone. A run whose round lets its lease go leaves the batch.

    Past `until` (the drain's time) or after MAX_ROUNDS_PER_TASK rounds, the runs still going
    finish their claimed steps, claim nothing more, and are handed to fresh tasks.

    With `refill`, runs that became ready meanwhile join the batch before each of its rounds
    (continuous batching): a round's commit is shared by as many runs as are ready, not only
    by those ready when the batch was claimed."""
    # The runs whose lease this task may hold (a round that returns None let it go, in its
    # own transaction, or never had it).
    held = set(items)
    # Whether the last look for more found some: under load, the next round looks again
    # whatever the flags say (a drain woken meanwhile may have cleared them).
    busy = False
    try:
        for rounds_left in range(MAX_ROUNDS_PER_TASK, 0, -1):
            if (
                refill is not None
                and rounds_left < MAX_ROUNDS_PER_TASK
                and rounds_left > REFILL_ROUNDS_LEFT
                and len(items) < refill.most
                and time.monotonic() < refill.until
                and (busy or refill.wanted())
            ):
                joined = refill.claim(refill.most - len(items))
                items |= dict.fromkeys(joined, AGAIN)
                held |= set(joined)
                busy = bool(joined)
            if not items:
                return
            last = rounds_left == 1 or (until is not None and time.monotonic() > until)
            # The last round claims nothing more: what it claimed would be left running.
            items = _group_round(items, token, chain=not last, raise_errors=raise_errors)
            held = set(items)
            if last:
                break
        # A long plan, or the drain's time is up: hand the rest to fresh tasks rather than
        # hog this worker. Let go in the same transaction, or a fresh task could find the
        # lease held and only poke.
        if held:
            with transaction.atomic():
                WorkflowRun.objects.filter(pk__in=held, lease_owner=token).update(
                    lease_owner="", lease_expires_at=None
                )
                for run_id in sorted(held):
                    outbox_enqueue(ADVANCE, str(run_id))
            held = set()
    finally:
        for run_id in held:
            _release_run_lease(run_id, token, quiet=True)


class _SetAside(Exception):
    """A run's part of a group round raised: roll the round back and redo it without the run."""

    def __init__(self, run_id: uuid.UUID) -> None:
        super().__init__(str(run_id))
        self.run_id = run_id


def _group_round(
    items: dict[uuid.UUID, Claim | _Again],
    token: str,
    *,
    chain: bool,
    raise_errors: bool,
) -> dict[uuid.UUID, Claim | _Again]:
    """One round of `_drive_batch`: what each run does next, None-valued runs dropped (their
    lease let go). Without `chain` only claimed steps run (and claim nothing more); runs with
    nothing claimed are left as they are."""
    todo = sorted(r for r, nxt in items.items() if chain or isinstance(nxt, Claim))
    going = set(todo)  # a batch holds up to a hundred runs: no list scan per run
    out: dict[uuid.UUID, Claim | _Again | None] = {
        r: nxt for r, nxt in items.items() if r not in going
    }
    # One run alone gains nothing from a group: its own transactions, as before batching.
    alone = todo if len(todo) == 1 else []
    todo = [] if alone else todo
    while todo:
        try:
            done: dict[uuid.UUID, Claim | _Again | None] = {}
            with transaction.atomic(), buffered_trace(), _locked_batch(todo, items):
                for run_id in todo:
                    try:
                        done[run_id] = _in_group(run_id, items[run_id], token, chain=chain)
                    except Exception as exc:
                        raise _SetAside(run_id) from exc
            out |= done
            todo = []
        except _SetAside as aside:
            log.info("run %s set aside from its batch: %r", aside.run_id, aside.__cause__)
            todo.remove(aside.run_id)
            alone.append(aside.run_id)
        except Exception:
            log.warning(
                "a batch's commit failed; its %d runs go on alone", len(todo), exc_info=True
            )
            alone += todo
            todo = []
    for run_id in sorted(alone):
        out[run_id] = _alone(run_id, items[run_id], token, chain=chain, raise_errors=raise_errors)
    return {r: nxt for r, nxt in out.items() if nxt is not None}


# A group round's runs and their steps, locked and read up front in two statements (runs by
# id, then their steps: the lock order) where each run's rounds would read them one by one.
# Only within that round's transaction; a run's steps there are as the round started, bar
# what its own commit writes (`_locked_steps_after`).
_BATCH: ContextVar[_Batch | None] = ContextVar("engine_batch", default=None)


@dataclass
class _Batch:
    runs: dict[uuid.UUID, WorkflowRun]
    steps: dict[uuid.UUID, list[StepRun]]
    # The rounds' ends (`_end_round`), written for all the runs in one statement at the
    # round's end: (claimed step's values + its id) and the run's values.
    claims: list[list[Any]] = field(default_factory=list)
    ends: list[list[Any]] = field(default_factory=list)
    waits: list[list[Any]] = field(default_factory=list)  # steps' waits (`_STEP_WAITED`)
    # The actions the waiting steps of the runs coordinating this round (no step of theirs
    # runs before their round reads these) wait for, with their ledger flag, by id.
    awaited: dict[str, Action] = field(default_factory=dict)
    # The runs whose claimed step runs this round: what may have changed of them, as locked
    # (read before any step ran: a step's body never sees these), for the step's commit
    # (`_fence_in_batch`).
    fresh: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    # The state chains of the waiting runs coordinating this round (what a resume's recovery
    # check verifies), by run.
    chains: dict[uuid.UUID, list[dict[str, Any]]] = field(default_factory=dict)


@contextmanager
def _locked_batch(
    run_ids: list[uuid.UUID], items: dict[uuid.UUID, Claim | _Again]
) -> Iterator[None]:
    if not hotsql.enabled():
        yield
        return
    runs: dict[uuid.UUID, WorkflowRun] = {}
    fresh: dict[uuid.UUID, dict[str, Any]] = {}
    for row in hotsql.rows(_LOCK_RUNS, [run_ids]):
        if isinstance(items.get(row[0]), Claim):
            # Its run is in memory already: its commit takes what may have changed from here.
            changed = {f: row[i] for f, i in _MUTABLE_AT.items()}
            changed["state"] = hotsql.loads(changed["state"])
            fresh[row[0]] = changed
            _remember_parent(row)
        else:
            runs[row[0]] = _run_with_agent(row)
    steps: dict[uuid.UUID, list[StepRun]] = {r: [] for r in run_ids}
    for row in hotsql.rows(_LOCK_BATCH_STEPS, [run_ids]):
        step: StepRun = _STEP_COLUMNS.build(row)
        steps[step.run_id].append(step)
    batch = _Batch(runs=runs, steps=steps, fresh=fresh)
    coordinating = [s for r, listed in steps.items() if r in runs for s in listed]
    if ids := _awaited_ids(coordinating):
        batch.awaited = {str(a.pk): a for a in actions_with_effect(ids)}
    if waiting := [r for r, run in runs.items() if run.status == RunStatus.WAITING and run.durable]:
        batch.chains = state_chains(waiting)
    token = _BATCH.set(batch)
    try:
        yield
        if batch.ends:
            # Columns, as arrays (psycopg sends a tuple as a record).
            claims = [list(c) for c in zip(*batch.claims, strict=True)] or [[]] * 6
            waits = [list(c) for c in zip(*batch.waits, strict=True)] or [[]] * 3
            ends = [list(c) for c in zip(*batch.ends, strict=True)]
            hotsql.rows(_SAVE_ENDS, [*claims, *waits, *ends])
    finally:
        _BATCH.reset(token)


def _locked_steps_after(run_id: uuid.UUID, step_pk: int, fields: dict[str, Any]) -> None:
    """A step's commit wrote `fields` to its row: the batch's copy follows."""
    batch = _BATCH.get()
    for step in batch.steps.get(run_id, []) if batch is not None else []:
        if step.pk == step_pk:
            for name, value in fields.items():
                setattr(step, name, value)


def _in_group(
    run_id: uuid.UUID, nxt: Claim | _Again, token: str, *, chain: bool
) -> Claim | _Again | None:
    """A run's part of a group round, inside the round's transaction; raises on any failure
    (the round rolls back and the run is set aside)."""
    if isinstance(nxt, Claim):
        return _attempt(nxt, inline=True, chain=chain)
    return _round(run_id, token, acquire=nxt is ACQUIRE)


def _alone(
    run_id: uuid.UUID, nxt: Claim | _Again, token: str, *, chain: bool, raise_errors: bool
) -> Claim | _Again | None:
    """A run's part of a round in transactions of its own: a failed attempt is recorded
    (`_execute`); a failed round lets the run's lease go."""
    if isinstance(nxt, Claim):
        return _execute(nxt, inline=True, chain=chain)
    try:
        return _coordinate(run_id, token, acquire=nxt is ACQUIRE)
    except Exception:
        _release_run_lease(run_id, token, quiet=True)
        if raise_errors:
            raise
        # Set aside, never failing its batch-mates; the reconciler sends it on as a task of
        # its own.
        log.exception("run %s: its round failed; left to the reconciler", run_id)
        return None


def _release_run_lease(run_id: uuid.UUID, token: str, *, quiet: bool = False) -> None:
    """Let go of the lease after something went wrong mid-round (a round that finishes lets go
    in its own transaction)."""
    try:
        WorkflowRun.objects.filter(pk=run_id, lease_owner=token).update(
            lease_owner="", lease_expires_at=None
        )
    except Exception:
        if not quiet:
            raise
        log.exception("run %s: could not release its lease; it will expire", run_id)


class _Again:
    """`_execute` could not chain (the attempt failed or was refused): coordinate afresh."""


AGAIN = _Again()


class _Acquire(_Again):
    """The run's first round takes its lease (`advance_run`)."""


ACQUIRE = _Acquire()


@dataclass
class _Coordinate(_Again):
    """An async step's commit took the run's free lease as `token`: the task coordinates."""

    token: str


_RUN_COLUMNS = hotsql.Columns(WorkflowRun, "r")
_AGENT = WorkflowRun._meta.get_field("agent").related_model
_AGENT_COLUMNS = hotsql.Columns(_AGENT, "a")
# A run with its agent; only the run's row is locked. Column and table names from the
# models, never from input.
# With the digest of the run's current state's snapshot: the parent of the next one this
# process writes (`state.remember_digest`), which a worker that did not write it would
# otherwise read in a statement of its own.
_SELECT_RUN = (
    f"SELECT {_RUN_COLUMNS.sql}, {_AGENT_COLUMNS.sql}, sn.digest"  # noqa: S608 (the models')
    f" FROM workflows_workflowrun r JOIN {_AGENT._meta.db_table} a ON a.id = r.agent_id"
    " LEFT JOIN workflows_runsnapshot sn ON sn.run_id = r.id AND sn.version = r.state_version"
)
_LOCK_RUN = f"{_SELECT_RUN} WHERE r.id = %s FOR NO KEY UPDATE OF r"
# A group round's, in the lock order (see _locked_batch).
_LOCK_RUNS = f"{_SELECT_RUN} WHERE r.id = ANY(%s) ORDER BY r.id FOR NO KEY UPDATE OF r"


def _run_with_agent(row: Sequence[Any]) -> WorkflowRun:
    run: WorkflowRun = _RUN_COLUMNS.build(row)
    run._state.fields_cache["agent"] = _AGENT_COLUMNS.build(row, _RUN_COLUMNS.width)
    _remember_parent(row)
    return run


def _remember_parent(row: Sequence[Any]) -> None:
    """The digest `_SELECT_RUN` read with the run (committed: it cannot change)."""
    if row[-1]:
        remember_digest(row[0], row[_MUTABLE_AT["state_version"]], row[-1])


def _lock_run(run_id: uuid.UUID) -> WorkflowRun | None:
    # The agent rides along (steps propose actions as it); only the run's row is locked.
    batch = _BATCH.get()
    if batch is not None and run_id in batch.runs:
        return batch.runs.pop(run_id)  # locked by the group round (read once)
    if hotsql.enabled():
        found = hotsql.rows(_LOCK_RUN, [run_id])
        return _run_with_agent(found[0]) if found else None
    return (
        WorkflowRun.objects.select_for_update(no_key=True, of=("self",))
        .select_related("agent")
        .filter(pk=run_id)
        .first()
    )


# What can change on a run's row once it exists; the rest (workflow, agent, input, plan...)
# is written with it and never again.
_MUTABLE_RUN_FIELDS = (
    "status",
    "state",
    "state_version",
    "error",
    "attention",
    "lease_owner",
    "lease_expires_at",
    "pokes",
    "wake_at",
    "deadline_at",
    "updated_at",
    "finished_at",
)


# Where `_LOCK_RUNS` reads each of them.
_MUTABLE_AT = {f: _RUN_COLUMNS.attnames.index(f) for f in _MUTABLE_RUN_FIELDS}


def _relock(run: WorkflowRun) -> WorkflowRun | None:
    """Lock the row of a run this task already holds in memory and bring the in-memory one
    up to date, reading only what can have changed (every step's commit: the run row is not
    read whole, with its agent, each time). The state is read again even at
    the same version: the step saw the in-memory dicts, and a step that wrote into them
    rather than through its StateView must not have that committed."""
    row = (
        WorkflowRun.objects.select_for_update(no_key=True)
        .filter(pk=run.pk)
        .values_list(*_MUTABLE_RUN_FIELDS)
        .first()
    )
    if row is None:
        return None
    for name, value in zip(_MUTABLE_RUN_FIELDS, row, strict=True):
        setattr(run, name, value)
    return run


_FENCE = """
WITH r AS (
    SELECT {cols} FROM workflows_workflowrun WHERE id = %s FOR NO KEY UPDATE
), f AS (
    UPDATE workflows_steprun SET lease_owner = '', lease_expires_at = NULL, error = '', {set}
    WHERE id = %s AND status = 'running' AND lease_owner = %s AND lease_expires_at > %s
      AND EXISTS (SELECT 1 FROM r WHERE r.status <> ALL(%s) AND r.attention = '')
    RETURNING id
)
SELECT {cols}, (SELECT count(*) FROM f) FROM r
"""
_FENCE_DONE = _FENCE.format(
    cols=", ".join(_MUTABLE_RUN_FIELDS),
    set="status = 'succeeded', output = %s, finished_at = %s, waiting_for = NULL",
)
_FENCE_WAIT = _FENCE.format(
    cols=", ".join(_MUTABLE_RUN_FIELDS), set="status = 'waiting', waiting_for = %s"
)
_TERMINAL = sorted(str(s) for s in TERMINAL_RUN_STATUSES)


def _relock_and_fence(
    run: WorkflowRun, step_pk: int, token: str, now: datetime, fields: dict[str, Any]
) -> tuple[WorkflowRun, bool]:
    """The commit's first statement: lock the run's row and bring `run` up to date (see
    `_relock`), then — the run neither finished nor held for a person — write the step's
    result (`fields`) only if this attempt still holds its unexpired lease (the fence). One
    round trip where it was two (run first, then the step: the lock order). Returns the run
    and whether the fence let the write through; raises LeaseLost if the run is gone, over
    or held."""
    if not hotsql.enabled():
        locked = _relock(run)
        if locked is None:
            raise LeaseLost("the run is gone")
        if locked.is_terminal or locked.attention:
            raise LeaseLost(f"the run is {locked.status}")
        fence = StepRun.objects.filter(
            pk=step_pk, status=StepStatus.RUNNING, lease_owner=token, lease_expires_at__gt=now
        )
        return locked, bool(fence.update(**fields))
    if fields["status"] == StepStatus.SUCCEEDED:
        sql, values = _FENCE_DONE, [hotsql.jsonb(fields["output"]), fields["finished_at"]]
    else:
        sql, values = _FENCE_WAIT, [hotsql.jsonb(fields["waiting_for"])]
    found = hotsql.rows(sql, [run.pk, *values, step_pk, token, now, _TERMINAL])
    if not found:
        raise LeaseLost("the run is gone")
    row = found[0]
    for name, value in zip(_MUTABLE_RUN_FIELDS, row, strict=False):
        setattr(run, name, value)
    run.state = hotsql.loads(run.state)
    if run.is_terminal or run.attention:
        raise LeaseLost(f"the run is {run.status}")
    return run, bool(row[-1])


# A step's output, in a group round (see `_fence_in_batch`): the fence was checked on the
# row the round locked.
_STEP_DONE = """UPDATE workflows_steprun SET lease_owner = '', lease_expires_at = NULL,
    error = '', status = 'succeeded', output = %s, finished_at = %s, waiting_for = NULL
    WHERE id = %s"""
# A step's wait (or sleep), likewise; cancelled instead if its round ended the run.
_STEP_WAITED = """UPDATE workflows_steprun SET status = %s, waiting_for = %s, lease_owner = '',
    lease_expires_at = NULL, error = '' WHERE id = %s"""


def _fence_in_batch(
    batch: _Batch, run: WorkflowRun, step_pk: int, token: str, now: datetime
) -> WorkflowRun:
    """`_relock_and_fence` without a round trip, for a step of a group round: the round
    locked the run's row and its steps' before any step ran and holds those locks, so what
    it read then is what the rows hold now — but for what this transaction wrote itself, and
    a step's body writes its run's row and its own step's row only through its result. So
    the run is brought up to date from that read (a fresh object: the body never saw it) and
    the lease is checked on it; the caller writes the output with the state (`_STEP_DONE`).
    Raises as the fence would (the round then sets the run aside, and it goes on alone)."""
    for name, value in batch.fresh.pop(run.pk).items():
        setattr(run, name, value)
    if run.is_terminal or run.attention:
        raise LeaseLost(f"the run is {run.status}")
    step = next((s for s in batch.steps.get(run.pk, []) if s.pk == step_pk), None)
    if step is None:
        raise LeaseLost("the step is gone")
    if step.status != StepStatus.RUNNING or step.lease_owner != token:
        raise LeaseLost("another attempt took the step over")
    if step.lease_expires_at is None or step.lease_expires_at <= now:
        raise StepTimedOut(f"timed out after {step.timeout_seconds:g}s (lease expired)")
    return run


def _coordinate(run_id: uuid.UUID, token: str, *, acquire: bool = False) -> Claim | None:
    """One round in its own transaction; with `acquire`, take the run's lease first (a
    conditional decision under the row lock: free or expired, else poke the holder)."""
    with transaction.atomic(), buffered_trace():
        return _round(run_id, token, acquire=acquire)


def _round(run_id: uuid.UUID, token: str, *, acquire: bool = False) -> Claim | None:
    """`_coordinate`'s round, in the caller's transaction."""
    run = _lock_run(run_id)
    if run is None or run.is_terminal:
        return None
    took_over = False
    if acquire:
        if run.has_live_lease:
            # The holder re-reads the run under this lock before it lets go: the poke is for
            # a holder between rounds (it looks again rather than stop).
            WorkflowRun.objects.filter(pk=run_id).update(pokes=F("pokes") + 1)
            return None
        took_over = bool(run.lease_owner)
        if took_over:
            log.warning("run %s: took over an expired lease", run_id)
        run.lease_owner = token
    return _coordinate_locked(run, token, took_over=took_over, acquired=acquire)


def _coordinate_locked(
    run: WorkflowRun,
    token: str,
    *,
    took_over: bool,
    acquired: bool = False,
    pending: list[str] | None = None,
    unwritten: dict[str, dict[str, Any]] | None = None,
) -> Claim | None:
    """One round under the run's row lock (held by the caller, in its transaction): repair,
    check, dispatch async steps, claim the next sync step. Returns the claimed sync step, or
    None once nothing more can start now — then the lease has been let go (in this
    transaction, so whoever waits on the row lock to advance the run finds it free: no nudge
    is lost) or was never ours.

    With `pending`, the run's fields this round changed at its end are added to it, not
    saved: the caller saves them in this transaction (with the state it writes). With
    `unwritten`, outputs (by step name) of steps that this transaction writes only after the
    round: what the run's outcome reads for them."""
    if run.lease_owner != token or run.is_terminal:
        return None
    now = timezone.now()
    if not _may_go_on(run, now, acquired):
        return None
    # Not the outputs: a round never reads them (a step reads them from the state), and
    # they grow with every step.
    steps = _lock_steps(run)
    crashed = _repair(run, steps, now)
    if crashed is None:
        return None
    awaited = _awaited_actions(steps)
    resumable, work = _due_work(steps, now, awaited)
    if work and (run.status == RunStatus.WAITING or took_over or crashed):
        cause = (
            "a crash"
            if took_over or crashed
            else "a wake-up"
            if any((s.waiting_for or {}).get("until") for s in resumable)
            else "a decision"
        )
        batch = _BATCH.get()
        chain = batch.chains.pop(run.pk, None) if batch is not None else None
        if not recovery_check(run, resumable, cause=cause, awaited=awaited, chain=chain):
            return None
    claim = _dispatch(run, steps, work, token, now)
    if run.is_terminal:
        return None
    if not _settle_status(
        run, steps, work, claim, pending, awaited=awaited, now=now, unwritten=unwritten
    ):
        return None
    _end_round(run, claim, now, pending)
    return claim


# A round reads every step but its output (a round never reads them — a step reads them from
# the state — and they grow with every step).
_STEP_COLUMNS = hotsql.Columns(StepRun, "s", exclude=("output",))
_SELECT_STEPS = f"SELECT {_STEP_COLUMNS.sql} FROM workflows_steprun s"  # noqa: S608 (the model's columns)
_LOCK_STEPS = f"{_SELECT_STEPS} WHERE s.run_id = %s ORDER BY s.position FOR NO KEY UPDATE"
# A group round's (see _locked_batch).
_LOCK_BATCH_STEPS = (
    f"{_SELECT_STEPS} WHERE s.run_id = ANY(%s) ORDER BY s.run_id, s.position FOR NO KEY UPDATE"
)


def _lock_steps(run: WorkflowRun) -> list[StepRun]:
    """The run's steps in plan order, locked (the caller holds the run's row lock: runs
    first, then steps), as model instances without their outputs."""
    batch = _BATCH.get()
    if batch is not None and run.pk in batch.steps:
        # Locked by the group round, and as they are now (see _locked_steps_after); read
        # once: a later round of the run's reads them afresh.
        locked = batch.steps.pop(run.pk)
        for each in locked:
            each._state.fields_cache["run"] = run
        return locked
    if not hotsql.enabled():
        return list(run.steps.select_for_update(no_key=True).defer("output").order_by("position"))
    steps = []
    for row in hotsql.rows(_LOCK_STEPS, [run.pk]):
        step: StepRun = _STEP_COLUMNS.build(row)
        step._state.fields_cache["run"] = run
        steps.append(step)
    return steps


def _may_go_on(run: WorkflowRun, now: datetime, acquired: bool) -> bool:
    """The checks before a round: the workflow known here, the deadline not passed, no
    recovery mismatch awaiting a person. Precondition: run row locked."""
    try:
        get_spec(run.workflow, run.workflow_version)
    except UnknownWorkflow as exc:
        fail_locked(run, f"{exc} in this worker")
        return False
    if run.deadline_at is not None and now >= run.deadline_at:
        fail_locked(run, f"run timed out (deadline {run.deadline_at:%Y-%m-%d %H:%M:%S} UTC)")
        return False
    if run.attention and not attention_resolved(run):
        _let_go(run, acquired)
        return False
    return True


def _repair(run: WorkflowRun, steps: list[StepRun], now: datetime) -> list[StepRun] | None:
    """Requeue steps whose worker died, resend queued steps whose message was lost; the
    crashed steps, or None if the round must stop. Precondition: run and steps locked."""
    crashed = [s for s in steps if s.status == StepStatus.RUNNING and not s.has_live_lease]
    for s in crashed:
        if not _requeue_crashed(run, s):
            return None
    stale = now - timedelta(seconds=stall_seconds())
    for s in steps:
        if s.status == StepStatus.QUEUED and s.dispatched_at and s.dispatched_at < stale:
            # Its message never reached a worker (broker restarted empty): send again.
            s.dispatched_at = now
            s.save(update_fields=["dispatched_at"])
            outbox_enqueue(outbox.step_task(run.plan, s.name), str(run.pk), s.name)
    return crashed


def _due_work(
    steps: list[StepRun], now: datetime, awaited: dict[str, Action]
) -> tuple[list[StepRun], list[StepRun]]:
    """(waiting steps whose wait is over, every step to start now in plan order)."""
    by_name = {s.name: s for s in steps}

    def deps_done(s: StepRun) -> bool:
        return all(by_name[d].is_done for d in s.depends_on if d in by_name)

    # Still with a person, or approved and inside its undo window: not settled yet.
    unsettled = {pk for pk, a in awaited.items() if _unsettled(a, now)}
    resumable = [
        s for s in steps if s.status == StepStatus.WAITING and _wait_over(s, now, unsettled)
    ]
    ready = [
        s
        for s in steps
        if s.status == StepStatus.PENDING
        and deps_done(s)
        and (s.not_before is None or s.not_before <= now)
    ]
    return resumable, sorted(resumable + ready, key=lambda s: s.position)


def _dispatch(
    run: WorkflowRun, steps: list[StepRun], work: list[StepRun], token: str, now: datetime
) -> Claim | None:
    """Queue the async steps of `work` (through the outbox) and claim its first sync step.

    A step that calls a model (`calls_model` in the plan; settings.MODEL_STEPS_ALONE, on with a
    model server) is never claimed here: this round may belong to a drain's batch, whose every
    commit would wait seconds on it. It is queued like an async step, to the model queue
    (outbox.RUN_MODEL_STEP), and run_step runs it alone. A sync one still goes one at a time:
    no sync step goes while another is queued or running (only such a step can be, the lease
    being free while it runs). It leaves the run running, as an async step's dispatch does;
    resumed, it is not a fresh attempt (run_step's claim counts one for a queued step: given
    back here)."""
    alone = (
        {p["name"] for p in run.plan if p.get("calls_model")}
        if work and settings.MODEL_STEPS_ALONE
        else set()
    )
    sync = next((s for s in work if s.mode == StepMode.SYNC), None)
    busy = (StepStatus.QUEUED, StepStatus.RUNNING)
    # The locked steps as they are now (a step committed in this transaction may not be
    # written yet: see `_fence_in_batch`).
    if (
        sync is not None
        and alone
        and any(s.mode == StepMode.SYNC and s.status in busy for s in steps)
    ):
        sync = None
    for s in work:
        if s.mode == StepMode.ASYNC or (s is sync and s.name in alone):
            fields = ["status", "dispatched_at"]
            if s.status == StepStatus.WAITING and s.mode == StepMode.SYNC:
                s.attempts -= 1
                fields.append("attempts")
            s.status = StepStatus.QUEUED
            s.dispatched_at = now
            s.save(update_fields=fields)
            outbox_enqueue(RUN_MODEL_STEP if s.name in alone else RUN_STEP, str(run.pk), s.name)
    if sync is None or sync.name not in alone:
        return _claim(run, sync, token, now) if sync is not None else None
    if run.status == RunStatus.WAITING:
        record_trace(run=run, kind=TraceKind.SYSTEM, message="run resumed")
    run.status = RunStatus.RUNNING
    return None


def _settle_status(
    run: WorkflowRun,
    steps: list[StepRun],
    work: list[StepRun],
    claim: Claim | None,
    pending: list[str] | None,
    *,
    awaited: dict[str, Action],
    now: datetime,
    unwritten: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """The run's status after this round: running, waiting (until when), or finished —
    then False, the round is over."""
    started = claim is not None or any(s.mode == StepMode.ASYNC for s in work)
    if started:
        if run.status != RunStatus.RUNNING:
            if run.status == RunStatus.WAITING:
                record_trace(run=run, kind=TraceKind.SYSTEM, message="run resumed")
            run.status = RunStatus.RUNNING
        run.wake_at = None
    elif all(s.is_done for s in steps):
        status, reason = run_outcome(run, unwritten)
        finish_locked(run, status, reason, all_done=True, pending=pending)
        return False
    else:
        in_flight = any(s.status in (StepStatus.RUNNING, StepStatus.QUEUED) for s in steps)
        waiting = [s for s in steps if s.status == StepStatus.WAITING]
        if waiting and not in_flight and run.status != RunStatus.WAITING:
            run.status = RunStatus.WAITING
        wakes = [_until(s) for s in waiting]
        # An approved action's undo window ends: the run wakes to execute it.
        wakes += [a.execute_after for a in awaited.values() if a.in_undo_window(now)]
        run.wake_at = min((w for w in wakes if w is not None), default=None)
    return True


# What a round's end writes of the run.
_ROUND_FIELDS = ("status", "wake_at", "lease_owner", "lease_expires_at", "updated_at")


def _unsaved_step(claim: Claim | _Again | None) -> StepRun | None:
    """The claimed step whose row is still to be written, now left to the caller to write."""
    if not isinstance(claim, Claim) or not claim.unsaved:
        return None
    claim.unsaved = False
    return claim.step


def _end_in_batch(
    batch: _Batch, run: WorkflowRun, claim: Claim | _Again | None, waited: list[Any] | None = None
) -> None:
    """A group round's end (the run's round fields, the step it claimed, and `waited`: the
    values of a step's wait, `_STEP_WAITED`'s, of another step): written with its
    batch-mates' at the round's end (the rows are locked; nothing in the round reads them
    again)."""
    if (step := _unsaved_step(claim)) is not None:
        batch.claims.append([*_claim_values(step), step.pk])
    if waited is not None:
        batch.waits.append(waited)
    batch.ends.append(_round_values(run))


def _end_round(
    run: WorkflowRun, claim: Claim | None, now: datetime, pending: list[str] | None
) -> None:
    """Extend the lease for the claimed step, or let it go; save (or leave to `pending`)."""
    fields = list(_ROUND_FIELDS)
    if claim is not None:
        lease = (
            lease_seconds()  # renewed with the step's by the heartbeat
            if heartbeat.enabled()
            else max(lease_seconds(), claim.step.timeout_seconds + LEASE_MARGIN_SECONDS)
        )
        run.lease_expires_at = now + timedelta(seconds=lease)
    else:
        # Nothing to run here now: let go in this transaction (see _coordinate_locked).
        run.lease_owner, run.lease_expires_at = "", None
    run.updated_at = now
    if pending is not None:
        # The caller writes the run's fields and the claimed step's row (`_claim_write`).
        pending.extend(f for f in fields if f not in pending)
        return
    batch = _BATCH.get()
    if batch is not None:
        _end_in_batch(batch, run, claim)
        return
    step = _unsaved_step(claim)
    if step is not None:
        hotsql.rows(_SAVE_CLAIM_AND_RUN, [*_claim_values(step), step.pk, *_round_values(run)])
    elif hotsql.enabled():
        hotsql.rows(_SAVE_ROUND, _round_values(run))
    else:
        run.save(update_fields=fields)


_SAVE_CLAIM = """UPDATE workflows_steprun SET status = %s, attempts = %s, lease_owner = %s,
    lease_expires_at = %s, started_at = %s, not_before = NULL WHERE id = %s"""
_SAVE_ROUND = """UPDATE workflows_workflowrun SET status = %s, wake_at = %s, lease_owner = %s,
    lease_expires_at = %s, updated_at = %s WHERE id = %s"""
# A claimed step and the run's round in one statement (the step's row is locked already).
_SAVE_CLAIM_AND_RUN = f"WITH claimed AS ({_SAVE_CLAIM}) {_SAVE_ROUND}"
# A group round's ends, every run's at once (see `_Batch`).
_SAVE_ENDS = """WITH claimed AS (
    UPDATE workflows_steprun s SET status = v.status, attempts = v.attempts,
        lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at,
        started_at = v.started_at, not_before = NULL
    FROM UNNEST(%s::text[], %s::int[], %s::text[], %s::timestamptz[], %s::timestamptz[],
        %s::bigint[]) AS v(status, attempts, lease_owner, lease_expires_at, started_at, id)
    WHERE s.id = v.id
), waited AS (
    UPDATE workflows_steprun s SET status = v.status, waiting_for = v.waiting_for,
        lease_owner = '', lease_expires_at = NULL, error = ''
    FROM UNNEST(%s::text[], %s::jsonb[], %s::bigint[]) AS v(status, waiting_for, id)
    WHERE s.id = v.id
)
UPDATE workflows_workflowrun r SET status = v.status, wake_at = v.wake_at,
    lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at, updated_at = v.updated_at
FROM UNNEST(%s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::timestamptz[],
    %s::uuid[]) AS v(status, wake_at, lease_owner, lease_expires_at, updated_at, id)
WHERE r.id = v.id"""


def _claim_write(claim: Claim | _Again | None) -> list[tuple[str, list[Any]]]:
    """The claimed step's row, still to be written by the caller of a round that had
    `pending` (in the statement that writes the run's)."""
    step = _unsaved_step(claim)
    return [] if step is None else [(_SAVE_CLAIM, [*_claim_values(step), step.pk])]


def _claim_values(step: StepRun) -> list[Any]:
    return [
        str(step.status),
        step.attempts,
        step.lease_owner,
        step.lease_expires_at,
        step.started_at,
    ]


def _round_values(run: WorkflowRun) -> list[Any]:
    return [
        str(run.status),
        run.wake_at,
        run.lease_owner,
        run.lease_expires_at,
        run.updated_at,
        run.pk,
    ]


def _let_go(run: WorkflowRun, acquired: bool) -> None:
    """Precondition: run row locked and its lease ours (unless only just `acquired` in this
    transaction: then nothing was written, nothing to undo)."""
    if acquired:
        return
    WorkflowRun.objects.filter(pk=run.pk).update(lease_owner="", lease_expires_at=None)
    run.lease_owner, run.lease_expires_at = "", None


def _until(step: StepRun) -> datetime | None:
    raw = (step.waiting_for or {}).get("until")
    return parse_datetime(raw) if isinstance(raw, str) else None


def _awaited_actions(steps: list[StepRun]) -> dict[str, Action]:
    """The actions the waiting steps wait for, by id, each annotated with whether the ledger
    holds its effect (what a recovery check asks): one query for all of them, none when
    nothing waits on an action."""
    ids = _awaited_ids(steps)
    if not ids:
        return {}
    batch = _BATCH.get()
    if batch is not None and all(str(i) in batch.awaited for i in ids):
        # Read by the group round, under the run's lock, before any of its steps ran.
        return {i: batch.awaited.pop(i) for i in dict.fromkeys(str(i) for i in ids)}
    return {str(a.pk): a for a in actions_with_effect(ids)}


def _awaited_ids(steps: list[StepRun]) -> list[Any]:
    return [
        a
        for s in steps
        if s.status == StepStatus.WAITING
        for a in (s.waiting_for or {}).get("actions") or []
    ]


def _unsettled(action: Action, now: datetime) -> bool:
    return action.status == ActionStatus.ESCALATED or action.in_undo_window(now)


def _wait_over(step: StepRun, now: datetime, unsettled: set[str]) -> bool:
    """Whichever comes first: its deadline, an awaited outside event, its actions settled
    (all of them; with `each`, any one: the step settles it and waits again for the rest)."""
    wf = step.waiting_for or {}
    until = _until(step)
    if until is not None and until <= now:
        return True
    if wf.get("event"):
        return True
    ids = [str(a) for a in wf.get("actions") or []]
    if ids:
        pending = [a for a in ids if a in unsettled]
        return len(pending) < len(ids) if wf.get("each") else not pending
    return until is None and not wf.get("events")


_CLAIM_FIELDS = (
    "status",
    "attempts",
    "lease_owner",
    "lease_expires_at",
    "started_at",
    "not_before",
)


def _claim(
    run: WorkflowRun, step: StepRun, token: str, now: datetime, *, save: bool = False
) -> Claim | None:
    """Precondition: run and step rows locked. Counts the attempt before it runs. Without
    `save`, the step's row is written by the round's end (`_end_round`), with the run's, in
    the same transaction (still committed before the step runs)."""
    resumed = step.status == StepStatus.WAITING or bool(step.waiting_for)
    until = _until(step)
    # Also on a fresh attempt after a crash: a step that already slept is not put back to sleep.
    woken = until is not None and until <= now
    if step.status != StepStatus.WAITING:
        if step.attempts >= step.max_attempts:
            dead_letter(run, step, step.error or "no attempts left")
            return None
        step.attempts += 1
    step.status = StepStatus.RUNNING
    step.lease_owner = token
    # In a worker the heartbeat renews a short lease up to the timeout (workflows.heartbeat).
    step.lease_expires_at = now + timedelta(seconds=heartbeat.first_lease(step.timeout_seconds))
    step.started_at = step.started_at or now
    step.not_before = None
    if save or not hotsql.enabled():
        step.save(update_fields=list(_CLAIM_FIELDS))
    deadline = now + timedelta(seconds=step.timeout_seconds)
    return Claim(
        run=run,
        step=step,
        token=token,
        resumed=resumed,
        woken=woken,
        deadline=deadline,
        unsaved=not save and hotsql.enabled(),
    )


def _requeue_crashed(run: WorkflowRun, step: StepRun) -> bool:
    """A step whose lease expired while running: its worker died or hung. Precondition: locks
    held. Returns False if that was its last attempt (dead-lettered; the run failed)."""
    error = f"attempt {step.attempts} lost its worker (lease expired while running)"
    record_trace(run=run, kind=TraceKind.ERROR, step_name=step.name, message=error)
    if step.attempts >= step.max_attempts:
        dead_letter(run, step, error)
        return False
    step.status = StepStatus.PENDING
    step.error = error
    step.lease_owner = ""
    step.lease_expires_at = None
    step.save(update_fields=["status", "error", "lease_owner", "lease_expires_at"])
    return True


# --- executing one step attempt ------------------------------------------------------------


def run_step(*, run_id: uuid.UUID, step_name: str) -> None:
    """An async step's task. A duplicate delivery finds the step claimed or done: a no-op."""
    token = new_owner()
    claim = _claim_async(run_id, step_name, token)
    if claim is None:
        return
    done = _execute(claim, inline=False)
    if isinstance(done, _Coordinate):
        # This task took the run's free lease in the step's commit: coordinate here, rather
        # than through another task. Should it die first, the lease expires and the
        # reconciler sends the run on (as for a coordinator that died).
        _drive(run_id, done.token, AGAIN)


def _claim_async(run_id: uuid.UUID, step_name: str, token: str) -> Claim | None:
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update(no_key=True).filter(pk=run_id).first()
        if run is None or run.is_terminal or run.attention:
            log.info("run_step %s/%s: run is gone, finished or held; no-op", run_id, step_name)
            return None
        step = (
            StepRun.objects.select_for_update(no_key=True)
            .filter(run_id=run_id, name=step_name)
            .first()
        )
        if step is None:
            return None
        now = timezone.now()
        crashed = step.status == StepStatus.RUNNING and not step.has_live_lease
        if step.status != StepStatus.QUEUED and not crashed:
            log.info(
                "run_step %s/%s delivered again while %s; no-op", run_id, step_name, step.status
            )
            return None
        if crashed:
            if not _requeue_crashed(run, step):
                return None
            if not recovery_check(run, [], cause="a crash"):
                return None
        claim = _claim(run, step, token, now, save=True)
        if claim is not None and run.status == RunStatus.PENDING:
            run.status = RunStatus.RUNNING
            run.save(update_fields=["status"])
        return claim


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the step at its timeout where we can (a worker's main thread, SIGALRM free);
    elsewhere the lease fence refuses its late commit."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
    )
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise StepTimedOut(f"timed out after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _execute(claim: Claim, *, inline: bool, chain: bool = False) -> Claim | _Again | None:
    """Run one claimed attempt and commit it, in a transaction of its own. With `chain` (the
    coordinator, inline), the commit's transaction also coordinates the next round: returns
    the next claimed sync step, or None once nothing more can start now (the lease let go).
    AGAIN when the attempt failed or was refused, or without `chain`: the caller coordinates
    in a transaction of its own."""
    run, step = claim.run, claim.step
    try:
        with transaction.atomic(), buffered_trace():
            return _attempt(claim, inline=inline, chain=chain)
    except LeaseLost as exc:
        log.warning("run %s step %s: %s; its work was rolled back", run.pk, step.name, exc)
    except Exception as exc:
        log.warning("run %s step %s attempt %d failed: %s", run.pk, step.name, step.attempts, exc)
        _fail_attempt(run.pk, step.pk, claim.token, exc)
    return AGAIN


def _attempt(claim: Claim, *, inline: bool, chain: bool) -> Claim | _Again | None:
    """`_execute`'s attempt — the step's body, then its commit — in the caller's transaction;
    raises whatever the attempt raised."""
    run, step = claim.run, claim.step
    spec = get_spec(run.workflow, run.workflow_version)
    step_spec = spec.step(step.template or step.name)
    params: dict[str, Any] = next(
        (p.get("params", {}) for p in run.plan if p.get("name") == step.name), {}
    )
    deadline = claim.deadline or timezone.now() + timedelta(seconds=step.timeout_seconds)
    with heartbeat.holding(run_id=run.pk, step_id=step.pk, token=claim.token, deadline=deadline):
        ctx = StepContext(
            run=run,
            step=step,
            model=get_model(),
            state=StateView(version=run.state_version, data=normalise(run.state)),
            params=dict(params),
            resumed=claim.resumed,
            woken=claim.woken,
            deadline=time.monotonic() + step.timeout_seconds,
            # A group round locked the run's row before this body (see `_fence_in_batch`).
            locked=(batch := _BATCH.get()) is not None and run.pk in batch.fresh,
        )
        with _time_limit(step.timeout_seconds):
            result = step_spec.run(ctx)
        if isinstance(result, dict) and step_spec.success is not None:
            why = step_spec.success(result)
            if why:
                raise CriterionFailed(f"success criterion not met: {why}")
        elif not isinstance(result, dict | Wait | Sleep):
            raise TypeError(f"step returned {type(result).__name__}, not a dict/Wait/Sleep")
        return _commit(ctx, result, claim.token, inline=inline, chain=chain)


def _commit(
    ctx: StepContext,
    result: dict[str, Any] | Wait | Sleep,
    token: str,
    *,
    inline: bool,
    chain: bool = False,
) -> Claim | _Again | None:
    """Inside the step's transaction: fence, then result + state + follow-ups, all or nothing;
    with `chain`, then the next round of coordination (see `_execute`)."""
    run, step = ctx.run, ctx.step
    now = timezone.now()
    fields: dict[str, Any] = {"lease_owner": "", "lease_expires_at": None, "error": ""}
    if isinstance(result, Wait):
        fields |= {"status": StepStatus.WAITING, "waiting_for": result.waiting_for()}
        message = f"waiting: {result.reason}"
    elif isinstance(result, Sleep):
        fields |= {
            "status": StepStatus.WAITING,
            "waiting_for": {"until": result.until.isoformat(), "reason": result.reason},
        }
        message = f"sleeping until {result.until:%Y-%m-%d %H:%M:%S} UTC: {result.reason}"
    else:
        fields |= {
            "status": StepStatus.SUCCEEDED,
            "output": result,
            "finished_at": now,
            "waiting_for": None,
        }
        message = ""
    batch = _BATCH.get()
    # A group round's output write goes with the state's (a dict always changes the state).
    written: list[tuple[str, list[Any]]] = []
    unwritten: dict[str, dict[str, Any]] | None = None
    # A group round's wait, written once its round is known (`_STEP_WAITED`).
    waited: list[Any] | None = None
    if batch is not None and run.pk in batch.fresh:
        locked = _fence_in_batch(batch, run, step.pk, token, now)
        if isinstance(result, dict):
            written = [(_STEP_DONE, [hotsql.jsonb(result), now, step.pk])]
            unwritten = {step.name: result}
        else:
            waited = [str(StepStatus.WAITING), hotsql.jsonb(fields["waiting_for"]), step.pk]
            # What it waits for, as the step read it in this attempt (`StepContext.action`),
            # is what the round that follows reads of it: not read again.
            awaited = [str(i) for i in (fields["waiting_for"] or {}).get("actions") or []]
            if awaited and all(i in ctx.read for i in awaited):
                batch.awaited.update({i: ctx.read[i] for i in awaited})
    else:
        locked, fenced = _relock_and_fence(run, step.pk, token, now, fields)
        if not fenced:
            fence = StepRun.objects.filter(pk=step.pk, status=StepStatus.RUNNING, lease_owner=token)
            if fence.exists():
                raise StepTimedOut(f"timed out after {step.timeout_seconds:g}s (lease expired)")
            raise LeaseLost("another attempt took the step over")
    _locked_steps_after(run.pk, step.pk, fields)
    changes = list(ctx.state.changes)
    if isinstance(result, dict):
        name = step.name
        changes.append(
            ("workspace", lambda ws: {**ws, "outputs": {**ws.get("outputs", {}), name: result}})
        )
    if message:
        record_trace(run=run, kind=TraceKind.SYSTEM, step_name=step.name, message=message)
    pending: list[str] = []
    nxt: Claim | _Again | None = AGAIN
    if chain:
        # The next round first (it sees this step's new status; the state and its snapshots
        # as they were, consistent for a recovery check), then one UPDATE of the run row for
        # both the round's fields and the new state. The round recomputes wake_at from every
        # waiting step, this one included.
        nxt = _coordinate_locked(
            locked, token, took_over=False, pending=pending, unwritten=unwritten
        )
    if waited is not None:
        if locked.is_terminal:
            # The round ended the run: finish_locked cancelled the steps the database had
            # waiting, which this one is not yet.
            waited[0] = str(StepStatus.CANCELLED)
        if isinstance(nxt, Claim) and nxt.step.pk == step.pk:
            # Resumed at once: the wait is written first, on its own (the claim's write is of
            # the same row).
            hotsql.rows(_STEP_WAITED, waited)
            waited = None
    if batch is not None and not changes and pending and set(pending) <= set(_ROUND_FIELDS):
        # Only the round's end to write (no new state): with the batch's, at the round's end.
        _end_in_batch(batch, locked, nxt, waited)
        pending, waited = [], None
    if waited is not None:
        written = [(_STEP_WAITED, waited)]
    # The next step's claim goes out with the run's UPDATE (and snapshot): one round trip.
    claimed = written + _claim_write(nxt)
    if changes:
        update_state(
            # The locked run is also the one a chained next step gets: it sees this state.
            run=locked,
            changes=changes,
            step_name=step.name,
            reason=f"{step.name} committed",
            current=(locked.state, locked.state_version),
            # The run's row lock is held: no other writer can get between read and write.
            locked=True,
            also=pending,
            statements=claimed,
        )
    elif pending and hotsql.enabled():
        hotsql.save(locked, pending, also=claimed)
    elif pending:
        locked.save(update_fields=pending)
    else:
        for sql, params in claimed:
            hotsql.rows(sql, params)
    if chain:
        return nxt
    if isinstance(result, Sleep | Wait) and result.until is not None:
        wake = result.until if locked.wake_at is None else min(locked.wake_at, result.until)
        WorkflowRun.objects.filter(pk=run.pk).update(wake_at=wake, updated_at=now)
    if not inline and _worth_advancing(run.pk):
        if locked.lease_owner:
            # A coordinator has it (or had it and died: the take-over's recovery check is for
            # a task of its own): a task, as ever.
            outbox_enqueue(ADVANCE, str(run.pk))
            return AGAIN
        # Free: this task takes it and coordinates once this commits, without a Celery hop.
        owner = new_owner()
        WorkflowRun.objects.filter(pk=run.pk).update(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds()),
            updated_at=now,
        )
        return _Coordinate(token=owner)
    return AGAIN


def _worth_advancing(run_id: uuid.UUID) -> bool:
    """After an async step committed (run row locked): is there anything for the coordinator —
    a step now ready, or no step left in flight? Spares a task per sibling of a fan-out."""
    steps = list(StepRun.objects.filter(run_id=run_id).values("name", "status", "depends_on"))
    status = {s["name"]: s["status"] for s in steps}
    done = {StepStatus.SUCCEEDED, StepStatus.CANCELLED}
    if not any(s in (StepStatus.RUNNING, StepStatus.QUEUED) for s in status.values()):
        return True
    return any(
        s["status"] == StepStatus.PENDING and all(status.get(d) in done for d in s["depends_on"])
        for s in steps
    )


def _fail_attempt(run_id: uuid.UUID, step_pk: int, token: str, exc: BaseException) -> None:
    """Record a failed attempt (fenced: only the attempt's owner may): retry later, or
    dead-letter after max_attempts."""
    error = f"{type(exc).__name__}: {exc}"[:4000]
    for attempt in range(2):
        try:
            with transaction.atomic():
                run = WorkflowRun.objects.select_for_update(no_key=True).get(pk=run_id)
                step = (
                    StepRun.objects.select_for_update(no_key=True)
                    .filter(pk=step_pk, status=StepStatus.RUNNING, lease_owner=token)
                    .first()
                )
                if step is None or run.is_terminal:
                    log.info("run %s: failed attempt already superseded; not recorded", run_id)
                    return
                spec = get_spec(run.workflow, run.workflow_version)
                retry = spec.step(step.template or step.name).retry
                if step.attempts >= step.max_attempts:
                    record_trace(
                        run=run,
                        kind=TraceKind.ERROR,
                        step_name=step.name,
                        message=f"attempt {step.attempts}/{step.max_attempts} failed: {error}",
                    )
                    dead_letter(run, step, error)
                    return
                delay = retry.delay_after(step.attempts)
                record_trace(
                    run=run,
                    kind=TraceKind.ERROR,
                    step_name=step.name,
                    message=f"attempt {step.attempts}/{step.max_attempts} failed: {error}; "
                    f"retrying in {delay:g}s",
                )
                step.status = StepStatus.PENDING
                step.error = error
                step.lease_owner = ""
                step.lease_expires_at = None
                step.not_before = timezone.now() + timedelta(seconds=delay)
                step.save(
                    update_fields=[
                        "status",
                        "error",
                        "lease_owner",
                        "lease_expires_at",
                        "not_before",
                    ]
                )
                outbox_enqueue(ADVANCE, str(run_id), countdown=delay)
                return
        except Exception:
            # The database connection itself may be what failed (a terminated backend):
            # drop it and try once more on a fresh one; else the lease expiry covers it.
            connection.close()
            if attempt:
                log.exception("run %s: could not record a failed attempt", run_id)
