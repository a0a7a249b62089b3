"""Task sends that must not be lost: written with the change that needs them, relayed after.

The one delivery mechanism: engine steps, Slack syncs, agent webhooks and alert posts are
all sent through here, and each transport schedules its retries here too (a row with a
countdown from `retry.DELIVERY`, written with the attempt that failed).

`enqueue` writes an Outbox row inside the caller's transaction and registers an after-commit
relay of that row. If the process dies between commit and send (or the broker is down), the
row stays and `relay_due` — run by beat — sends it once it is due; a failed send is tried
again on the same backoff policy. Every task is idempotent, so the rare double send (sent,
then the process died before deleting the row) changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from config.celery import app

from .models import Outbox
from .retry import DELIVERY

log = logging.getLogger(__name__)

ADVANCE = "workflows.tasks.advance_run"
RUN_STEP = "workflows.tasks.run_step"
# run_step for a step that calls a model (specs.StepSpec.calls_model), routed
# (settings.CELERY_TASK_ROUTES) to the model queue, `<queue>-model`: in scale-out mode a pool
# of its own serves it, so a model's seconds never hold a batch worker's child, let alone a
# drain's batch. Re-sends of a lost message (engine._repair, beat.resend_lost) go the same
# way: `step_task`.
RUN_MODEL_STEP = "workflows.tasks.run_model_step"


def step_task(plan: list[dict[str, Any]], name: str) -> str:
    """The task that runs the queued step `name` of a run with this plan: RUN_MODEL_STEP for
    one that calls a model where such steps run alone (settings.MODEL_STEPS_ALONE)."""
    from django.conf import settings

    alone = settings.MODEL_STEPS_ALONE and any(
        p.get("name") == name and p.get("calls_model") for p in plan
    )
    return RUN_MODEL_STEP if alone else RUN_STEP


# Written into the broker once; gone means the broker lost its data (restarted empty), and
# with it every message sent before: see broker_restarted.
EPOCH_KEY = "caliber:broker-epoch"
# The same as ADVANCE, routed (settings.CELERY_TASK_ROUTES) to the queue workers serve first:
# a run going on after a person's decision, an undo window's end, a wake-up.
RESUME = "workflows.tasks.resume_run"

# The engine's drains (engine.drain_runs): claim ready runs in batches; woken by `wake_drain`.
# DRAIN takes decided runs first, then starts; DRAIN_RESUMES, what a decision wakes, only
# decided runs, routed (settings.CELERY_TASK_ROUTES) to the queue workers serve first (and
# the scale-out resumer, which serves nothing else: no start's step ever holds it).
DRAIN = "workflows.tasks.drain_runs"
DRAIN_RESUMES = "workflows.tasks.drain_resumes"
DRAIN_FLAG = "caliber:drain-pending"
DRAIN_FLAG_TTL = 30

# Task-name prefix -> the queue its tasks go to (None: the default queue), asked at send
# time. Registered at app start by an app that routes its tasks (Slack's own workers).
_routes: dict[str, Callable[[], str | None]] = {}


def route(prefix: str, queue: Callable[[], str | None]) -> None:
    _routes[prefix] = queue


def _queue_for(task: str) -> str | None:
    for prefix, queue in _routes.items():
        if task.startswith(prefix):
            return queue()
    return None


def enqueue(task: str, *args: Any, countdown: float = 0) -> Outbox:
    """Precondition: inside the transaction whose commit makes the task necessary."""
    row = Outbox.objects.create(
        task=task,
        args=list(args),
        available_at=timezone.now() + timedelta(seconds=countdown),
    )
    # The row as written, not read back: the beat relay only takes rows older than its
    # grace period, so this relay is nearly always alone with it (a rare double send is
    # harmless, see above). robust: the change is committed by then; a relay that fails (the
    # broker or the database connection gone) leaves the row to beat, and must never turn a
    # committed change into an error for whoever made it.
    transaction.on_commit(lambda: relay(row.pk, row=row), robust=True)
    return row


def enqueue_many(
    sends: list[tuple[str, list[Any]]], *, later: float = 0, later_from: int | None = None
) -> list[Outbox]:
    """enqueue() for a batch (a broker restart's re-sends): one INSERT, and after commit one
    relay that sends them in turn and deletes the sent rows in one statement. Row by row,
    the 112 re-sends of a restart cost 224 statements after commit: 5 s on a loaded
    machine, all of it before the first re-sent task could run. The sends from index
    `later_from` on go with a countdown of `later` seconds."""
    now = timezone.now()
    start = len(sends) if later_from is None else later_from
    rows = Outbox.objects.bulk_create(
        [
            Outbox(
                task=task,
                args=list(args),
                available_at=now + timedelta(seconds=later if i >= start else 0),
            )
            for i, (task, args) in enumerate(sends)
        ]
    )
    if rows:
        transaction.on_commit(lambda: relay_rows(rows), robust=True)
    return rows


def relay_rows(rows: list[Outbox]) -> int:
    """Send `rows` (as their writer holds them) in order and delete those sent; stops at the
    first failed send (the broker is down: the rest stay for beat, like relay()'s)."""
    sent: list[int] = []
    try:
        for row in rows:
            countdown = (row.available_at - timezone.now()).total_seconds()
            try:
                send(row.task, row.args, countdown)
            except Exception as exc:
                log.warning("outbox %s not sent (%s); beat will retry", row.pk, exc)
                _failed(row, exc)
                break
            sent.append(row.pk)
    finally:
        Outbox.objects.filter(pk__in=sent).delete()
    return len(sent)


def send_after_commit(task: str, *args: Any, countdown: float = 0) -> None:
    """For a send whose need the transaction already writes down where a scan finds it: no
    outbox row, the task sent after commit. Precondition: inside that transaction.

    The durable wake-up is then the row itself — a pending run, a waiting run whose actions
    are all decided — which the reconciler re-enqueues once it stalls (and `resend_lost`
    after a broker restarted empty). Only a send that fails writes an outbox row (beat's
    relay retries it at once, not a stall later); a process that dies between commit and
    send leaves it to the reconciler. An INSERT, a DELETE and a commit fewer per send."""
    available = timezone.now() + timedelta(seconds=countdown)

    def send_or_keep() -> None:
        try:
            send(task, list(args), (available - timezone.now()).total_seconds())
        except Exception as exc:
            log.warning("%s %s not sent (%s); the outbox keeps it for beat", task, args, exc)
            Outbox.objects.create(
                task=task,
                args=list(args),
                available_at=available,
                attempts=1,
                last_error=f"{type(exc).__name__}: {exc}"[:2000],
            )

    # robust: the change is committed; a send that fails (and a row that cannot be written,
    # the database gone too) must never turn it into an error for whoever made it.
    transaction.on_commit(send_or_keep, robust=True)


def _drain_flag(task: str = DRAIN) -> str:
    from django.conf import settings  # read at call time: tests and benches set the queue

    return f"{DRAIN_FLAG}:{getattr(settings, 'CELERY_TASK_DEFAULT_QUEUE', 'caliber')}:{task}"


# This process's client of the broker's Redis, by URL (redis-py's pool reconnects after a
# fork or a restart): opening a kombu channel per wake-up cost more than the start it woke.
_clients: dict[str, Any] = {}


def _broker_client() -> Any:
    """The broker's Redis client, or None where the broker is not Redis (embedded mode)."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5)
    return client


def _flag(client: Any, op: Callable[[], Any]) -> Any:
    """One flag command; once more on a fresh connection if the first met one the server
    dropped (a Redis restarted since this process last used it)."""
    try:
        return op()
    except redis.ConnectionError:
        return op()


def wake_drain(task: str = DRAIN) -> None:
    """Make sure a drain (engine.drain_runs) comes: send one unless one is already pending.

    At most one wake-up message waits at a time: the flag is set with the send and cleared
    by the drain before it claims anything, so work committed before the clear is claimed by
    that drain and work committed after it sends a fresh one — no wake-up is lost. The flag
    expires (a send that vanished with its broker cannot silence wake-ups for longer); beat's
    reconciler is the safety net for a run nothing woke. Call after commit."""
    try:
        client = _broker_client()
        key = _drain_flag(task)
        if client is not None and not _flag(
            client, lambda: client.set(key, "1", nx=True, ex=DRAIN_FLAG_TTL)
        ):
            return
        try:
            send(task, [], 0)
        except Exception:
            if client is not None:
                client.delete(key)
            raise
    except Exception as exc:
        log.warning("drain wake-up not sent (%s); the outbox keeps it for beat", exc)
        Outbox.objects.create(
            task=task, args=[], attempts=1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )


class _Wake:
    """The after-commit hook of wake_after_commit, recognisable among a transaction's hooks.
    `wake_drain` is looked up when it runs (tests replace it)."""

    def __init__(self, task: str) -> None:
        self.task = task
        # A hook that ran still sits in the list where a test ran it without a commit
        # (captureOnCommitCallbacks): the next wake-up asked for must register anew.
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        wake_drain(self.task)

    def __repr__(self) -> str:  # what Django's log of a failed hook names
        return f"wake_after_commit({self.task!r})"


def wake_after_commit(task: str = DRAIN) -> None:
    """wake_drain(task) after commit, registered at most once per transaction: a group round
    opens up to a hundred escalations in one, and each asked for the same wake-up (a Redis
    round trip each, after commit, for one flag). Outside a transaction it wakes at once.
    Precondition: inside the transaction whose commit makes the drain necessary.

    A hook already registered counts only if every savepoint it was registered in is still
    open around this call: a rollback that drops it (Django drops a hook with its savepoint)
    then rolls this call's work back too, which then needs no wake-up. (One from a savepoint
    since released would do as well, but telling the two apart is left to Django: the cost
    of not relying on it is one more wake-up, never a lost one.)"""
    conn = transaction.get_connection()
    if conn.in_atomic_block:
        open_savepoints = set(conn.savepoint_ids)
        for savepoints, hook, _robust in conn.run_on_commit:
            if (
                isinstance(hook, _Wake)
                and hook.task == task
                and not hook.ran
                and savepoints <= open_savepoints
            ):
                return
    # robust: the change is committed by then; a wake-up that fails (its fallback row not
    # written either) is the reconciler's, and must never turn it into an error.
    transaction.on_commit(_Wake(task), robust=True)


def drain_woken(task: str = DRAIN) -> None:
    """The drain's first act: clear the flag, so whatever commits from now on wakes again."""
    client = _broker_client()
    if client is not None:
        key = _drain_flag(task)
        _flag(client, lambda: client.delete(key))


def drain_wanted(*tasks: str) -> bool:
    """Whether work committed since the last drain of any of `tasks` cleared its flag (the
    wake-up is on its way): what a running drain asks before it looks for more. False where
    there is no flag (embedded mode)."""
    client = _broker_client()
    if client is None:
        return False
    keys = [_drain_flag(task) for task in tasks]
    return bool(_flag(client, lambda: client.exists(*keys)))


def send(task: str, args: list[Any], countdown: float = 0) -> None:
    app.send_task(
        task, args=args, countdown=countdown if countdown > 0 else None, queue=_queue_for(task)
    )


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
        _failed(row, exc)
        return False
    Outbox.objects.filter(pk=row_id).delete()
    return True


def _failed(row: Outbox, exc: Exception) -> None:
    """Record a failed send and put the row's next try off by the delivery backoff. A task
    send is never given up: past the policy's last attempt it keeps its longest wait."""
    attempts = row.attempts + 1
    wait = DELIVERY.backoff(min(attempts, DELIVERY.max_attempts))
    Outbox.objects.filter(pk=row.pk).update(
        attempts=attempts,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        available_at=max(row.available_at, timezone.now() + timedelta(seconds=wait)),
    )


def relay_due(*, grace_seconds: float, limit: int = 500) -> int:
    """Send rows the after-commit relay did not (older than `grace_seconds`) once they are
    due: the one scan for every delivery's lost send and pending retry. A row whose send
    already failed races no after-commit relay: it is due without the grace (a row that
    failed while the broker was away went out up to OUTBOX_GRACE_SECONDS late).

    Rows are claimed with SKIP LOCKED so two relays never send the same row at once.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    sent = 0
    with transaction.atomic():
        rows = list(
            Outbox.objects.select_for_update(skip_locked=True)
            .filter(Q(created_at__lt=cutoff) | Q(attempts__gt=0), available_at__lte=now)
            .order_by("id")[:limit]
        )
        done: list[int] = []
        for row in rows:
            countdown = (row.available_at - timezone.now()).total_seconds()
            try:
                send(row.task, row.args, countdown)
            except Exception as exc:
                log.warning("outbox relay stopped at %s: %s", row.pk, exc)
                _failed(row, exc)
                break
            done.append(row.pk)
            sent += 1
        Outbox.objects.filter(pk__in=done).delete()
    return sent


def broker_restarted(client: Any = None) -> bool:
    """True the first time it is asked after the broker lost its data (and on first use).

    A Redis restarted empty takes every queued message with it, and nothing else says so:
    the outbox row of each was deleted when it was sent. The epoch key vanishes with them;
    whoever writes it back first (SET NX, so one caller per restart) re-sends what the runs
    wait on (engine.resend_lost). `client`: a redis client; default, the Celery broker's.
    False where the broker is not Redis (embedded mode's in-memory transport)."""
    if client is None:
        with app.connection_for_write() as conn:
            client = getattr(conn.default_channel, "client", None)
            if client is None:
                return False
            return _claim_epoch(client)
    return _claim_epoch(client)


def _claim_epoch(client: Any) -> bool:
    try:
        return bool(client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True))
    except Exception:
        # The first command after a restart meets the connection the old server dropped;
        # the client reconnects on the next one. Asked again now, not a relay period later.
        return bool(client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True))
