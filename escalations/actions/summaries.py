"""Writing the model's summaries of escalations, many at a time, after they committed.

An escalation opens with the template summary, wanting the model's (`summary_wanted_at`, set
by escalate_action), and after commit wakes the writer (`want_summary`) through
outbox.wake_after_commit (once per transaction, however many it opens): at most one wake-up
message waits however many escalations open, and the writer clears its flag before it claims
anything, so what commits after the clear sends a fresh one and none is lost. The row is the
durable wake-up, not the message: beat runs the writer too (settings.CELERY_BEAT_SCHEDULE),
for a wake-up lost with its broker and for summaries a dead writer held.

The writer claims waiting summaries, oldest first, by pushing their `summary_wanted_at` one
lease ahead (committed before the model is asked): a second writer (a duplicate wake-up,
beat's) finds nothing to take, and those of a writer that died come back when the lease
ends. The model is asked outside any transaction: inline for the offline model (it
answers in microseconds), else in up to settings.SUMMARY_CONCURRENCY threads, topped up as
calls end, so that seconds-long calls overlap instead of queueing behind each other and a
summary is written as soon as its own call ends, not the slowest of its batch. What has been
answered is written together: one INSERT of the model calls, one UPDATE of the summaries
(only those whose lease is still this writer's: one that outlived its lease writes nothing),
then one live push each (notify), as the single-summary task did.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Case, TextField, Value, When
from django.utils import timezone

from workflows import hotsql, outbox, rows
from workflows.agents import Attempt
from workflows.llm import ModelClient, RenderedPrompt, get_model
from workflows.models import Action, WorkflowRun
from workflows.prompts.actions import model_call, pinned_versions, render, version_for_run
from workflows.prompts.models import ModelCall

from .. import notify
from ..models import AgentProfile, Escalation
from ..search import search_text_for_action
from ..summary import (
    MAX_REPAIRS,
    PENDING_NOTE,
    PROMPT,
    UNAVAILABLE_NOTE,
    ask_summary,
    facts,
    unavailable,
)

log = logging.getLogger(__name__)

WRITE_SUMMARIES = "escalations.tasks.write_summaries"
# Summaries claimed at once for the offline model (a remote one: SUMMARY_CONCURRENCY).
BATCH_MAX = 32
# A writer stops claiming after this long and wakes another if more wait: a task ends well
# inside the Celery time limit (its last calls, OPENAI_BUDGET_SECONDS each, included).
WRITER_SECONDS = 30.0
# A claim holds this long past the longest the model may take to answer it.
LEASE_MARGIN_SECONDS = 60.0


def want_summary() -> None:
    """Wake the writer after commit. Precondition: inside the transaction that opened an
    escalation with `summary_wanted_at` set: its row is what the writer looks for."""
    outbox.wake_after_commit(WRITE_SUMMARIES)


@dataclass
class _Summary:
    escalation: Escalation
    lease: datetime
    known: dict[str, str] | None = None
    prompt: RenderedPrompt | None = None
    text: str = ""
    attempts: list[Attempt] = field(default_factory=list)


def write_waiting_summaries(
    *, max_batch: int | None = None, seconds: float = WRITER_SECONDS
) -> int:
    """Write the model's summary of every escalation waiting for one; how many it wrote.

    Safe to run twice or at once (see the module's docstring). `max_batch`: the most it
    claims, or asks the model about, at once."""
    outbox.drain_woken(WRITE_SUMMARIES)  # first: whatever commits from now on wakes again
    model = get_model()
    width = max_batch or (BATCH_MAX if model.offline else settings.SUMMARY_CONCURRENCY)
    lease = timedelta(seconds=_lease_seconds(model))
    deadline = time.monotonic() + seconds
    written, more = 0, True
    asking: set[Future[_Summary]] = set()
    with _asker(model, width) as ask:
        while True:
            room = width - len(asking)
            if more and room > 0 and time.monotonic() < deadline:
                claimed = _claim(room, lease)
                more = len(claimed) == room
                asking |= {ask(summary) for summary in _prepare(claimed)}
            if not asking:
                break
            done, pending = wait(asking, return_when=FIRST_COMPLETED)
            asking = set(pending)
            written += _write([f.result() for f in done])
    if more:
        outbox.wake_drain(WRITE_SUMMARIES)  # out of time with more waiting: another goes on
    return written


def _lease_seconds(model: ModelClient) -> float:
    if model.offline:
        return LEASE_MARGIN_SECONDS
    return settings.OPENAI_BUDGET_SECONDS * (MAX_REPAIRS + 1) + LEASE_MARGIN_SECONDS


@contextmanager
def _asker(model: ModelClient, width: int) -> Iterator[Callable[[_Summary], Future[_Summary]]]:
    """Where the model is asked: inline for the offline model, else in a bounded pool of
    threads (they touch no database: this thread reads and writes for them)."""
    if model.offline:

        def inline(summary: _Summary) -> Future[_Summary]:
            done: Future[_Summary] = Future()
            done.set_result(_ask(model, summary))
            return done

        yield inline
        return
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="summary") as pool:
        yield lambda summary: pool.submit(_ask, model, summary)


def _claim(n: int, lease: timedelta) -> list[_Summary]:
    """Take up to `n` waiting summaries, oldest first, for `lease`; committed on return.

    Not SKIP LOCKED: a row is locked by far more than another writer (a decision, an SLA
    move, the engine), and one skipped for that would be left to nobody until beat (this
    writer was the wake-up for it). So the rows are locked waiting, in id order (like every
    other batch that locks escalations), and one another writer leased in the meantime no
    longer matches once its lock is let go."""
    now = timezone.now()
    until = now + lease
    if hotsql.enabled():
        rows = [_claimed(row) for row in hotsql.rows(_CLAIM, [now, n, now, until])]
        return [_Summary(escalation=e, lease=until) for e in rows]
    ids = list(
        Escalation.objects.filter(summary_wanted_at__lte=now)
        .order_by("summary_wanted_at")
        .values_list("pk", flat=True)[:n]
    )
    if not ids:
        return []
    with transaction.atomic():
        rows = list(
            Escalation.objects.select_for_update(of=("self",))
            .select_related("action__run", "action__agent")
            .filter(pk__in=ids, summary_wanted_at__lte=now)
            .order_by("pk")
        )
        taken = Escalation.objects.filter(
            pk__in=[e.pk for e in rows], summary_wanted_at__lte=now
        ).update(summary_wanted_at=until)
        if taken < len(rows):
            # SQLite (embedded mode) locks no rows: another writer took some since the read.
            mine = set(
                Escalation.objects.filter(pk__in=ids, summary_wanted_at=until).values_list(
                    "pk", flat=True
                )
            )
            rows = [e for e in rows if e.pk in mine]
    for e in rows:
        e.summary_wanted_at = until
    return [_Summary(escalation=e, lease=until) for e in rows]


_ESCALATION = hotsql.Columns(Escalation, "e")
_ACTION = hotsql.Columns(Action, "a")
_RUN = hotsql.Columns(WorkflowRun, "r")
_AGENT = hotsql.Columns(AgentProfile, "g")
# _claim's pick, lock and lease as one prepared statement (it was three, and the ORM built
# four models per row): the oldest wanted, locked in id order (ORDER BY before the locking
# clause; one whose lease moved while this waited for its lock is re-checked and left out),
# their lease pushed, and each with its action, run (none for an action sent via API) and
# agent, as the facts and the prompt need them. Table and column names from the models.
_CLAIM = f"""
WITH wanted AS (
    SELECT id FROM {Escalation._meta.db_table} WHERE summary_wanted_at <= %s
    ORDER BY summary_wanted_at LIMIT %s
), held AS (
    SELECT e.id FROM {Escalation._meta.db_table} e
    WHERE e.id IN (SELECT id FROM wanted) AND e.summary_wanted_at <= %s
    ORDER BY e.id FOR UPDATE OF e
), e AS (
    UPDATE {Escalation._meta.db_table} t SET summary_wanted_at = %s
    FROM held WHERE t.id = held.id
    RETURNING t.*
)
SELECT {_ESCALATION.sql}, {_ACTION.sql}, {_AGENT.sql}, {_RUN.sql}
FROM e JOIN {Action._meta.db_table} a ON a.id = e.action_id
JOIN {AgentProfile._meta.db_table} g ON g.id = a.agent_id
LEFT JOIN {WorkflowRun._meta.db_table} r ON r.id = a.run_id
ORDER BY e.id
"""  # noqa: S608


def _claimed(row: tuple[Any, ...]) -> Escalation:
    escalation: Escalation = _ESCALATION.build(row)
    at = _ESCALATION.width
    action: Action = _ACTION.build(row, at)
    at += _ACTION.width
    action._state.fields_cache["agent"] = _AGENT.build(row, at)
    at += _AGENT.width
    action._state.fields_cache["run"] = _RUN.build(row, at) if row[at] is not None else None
    escalation._state.fields_cache["action"] = action
    return escalation


def _prepare(claimed: list[_Summary]) -> list[_Summary]:
    """What to ask the model, read here (the asking threads touch no database): the facts
    and each run's pinned prompt version (two queries for the batch; a run not pinned to it
    yet, or an escalation with no run, reads its own)."""
    runs = {s.escalation.action.run_id: s.escalation.action.run for s in claimed}
    runs.pop(None, None)
    pinned = pinned_versions(list(runs.values()), PROMPT) if runs else {}
    for s in claimed:
        action = s.escalation.action
        try:
            s.known = facts(action, list(s.escalation.reasons))
            version = pinned.get(action.run_id) or version_for_run(action.run, PROMPT)
            s.prompt = render(version, s.known)
        except DatabaseError:
            raise  # the database, not this escalation: its lease brings it back
        except Exception as exc:
            # A prompt that no longer renders, an action type no longer declared: asked
            # again it would fail again, and a reviewer must not wait for it forever.
            log.warning("summary of escalation %s: no model call (%s)", s.escalation.pk, exc)
            s.text = unavailable(s.known) if s.known is not None else _gave_up(s.escalation)
    return claimed


def _gave_up(escalation: Escalation) -> str:
    summary = escalation.summary
    if summary.endswith(PENDING_NOTE):
        summary = summary[: -len(PENDING_NOTE)]
    return summary + UNAVAILABLE_NOTE


def _ask(model: ModelClient, summary: _Summary) -> _Summary:
    """In a thread of its own (or inline): no database."""
    if summary.text or summary.prompt is None or summary.known is None:
        return summary
    try:
        summary.text = ask_summary(
            model,
            summary.prompt,
            summary.known,
            summary.attempts.append,
            about=f"escalation {summary.escalation.pk}",
        )
    except Exception:
        log.exception("summary of escalation %s", summary.escalation.pk)
        summary.text = unavailable(summary.known)
    # PostgreSQL cannot store NUL in a text column; a model may still write one.
    summary.text = summary.text.replace("\x00", " ")
    return summary


def _write(done: list[_Summary]) -> int:
    """Write what was answered together; if that fails, each alone, so that one bad row
    never keeps its batch-mates' summaries back (it stays claimed: its lease brings it
    back to the next writer)."""
    try:
        return _write_together(done)
    except DatabaseError:
        if len(done) == 1:
            log.exception("summary of escalation %s not written", done[0].escalation.pk)
            return 0
        log.warning("writing %d summaries together failed; one at a time", len(done))
        return sum(_write([s]) for s in done)


def _write_together(done: list[_Summary]) -> int:
    with transaction.atomic():
        # Every call made is recorded, whether or not its summary is still this writer's.
        calls = [
            model_call(
                run=s.escalation.action.run,
                step_name=s.escalation.action.step_name,
                prompt=s.prompt,
                **asdict(attempt),
            )
            for s in done
            if s.prompt is not None
            for attempt in s.attempts
        ]
        if hotsql.enabled():
            held = _write_held(done, calls)
        else:
            ModelCall.objects.bulk_create(calls)
            held = _write_held_orm(done)
        for s in held:
            s.escalation.summary = s.text
            s.escalation.summary_wanted_at = None
            notify.escalation_summarised(s.escalation)
    return len(held)


# The fence and the write in one prepared statement: only summaries still claimed by this
# writer's lease (another writer took those whose lease ended), locked in id order like any
# other batch (ORDER BY comes before the locking clause: the rows are locked as sorted, and
# one whose lease changed while this waited for its lock is re-checked and left out). The
# decided or moved escalation's status and team come back for the live push. Through the
# ORM, the CASE WHEN per row was compiled in Python every time (a filter resolved per WHEN):
# most of the write's CPU in the engine benchmark's profile.
# The model calls are inserted by the same statement (a data-modifying CTE runs whether or
# not it is read), as one multi-row INSERT: one round trip per batch, not two.
_WRITE_HELD = f"""
WITH calls AS (
    INSERT INTO {ModelCall._meta.db_table} ({{columns}}) {{rows}}
), written (id, lease, summary, search_text) AS (
    SELECT * FROM UNNEST(%s::uuid[], %s::timestamptz[], %s::text[], %s::text[])
), held AS (
    SELECT e.id FROM {Escalation._meta.db_table} e JOIN written w ON w.id = e.id
    WHERE e.summary_wanted_at = w.lease
    ORDER BY e.id FOR UPDATE OF e
)
UPDATE {Escalation._meta.db_table} e
SET summary = w.summary, search_text = w.search_text, summary_wanted_at = NULL
FROM held JOIN written w ON w.id = held.id
WHERE e.id = held.id
RETURNING e.id, e.status, e.team_id
"""  # noqa: S608


@functools.cache
def _write_held_sql() -> str:
    # The calls' columns and types are the model's (rows.unnest), read once PostgreSQL is
    # known to be the database.
    return _WRITE_HELD.format(
        columns=", ".join(rows.columns(ModelCall)),
        rows=rows.unnest(ModelCall),
    )


def _write_held(done: list[_Summary], calls: list[ModelCall]) -> list[_Summary]:
    """PostgreSQL: the summaries of `done` still this writer's, written, and `calls`
    inserted (see _WRITE_HELD)."""
    # Searchable by what the model wrote too, not only by the template it replaces.
    searchable = [search_text_for_action(s.escalation.action, s.text) for s in done]
    by_pk = {s.escalation.pk: (s, text) for s, text in zip(done, searchable, strict=True)}
    written = hotsql.rows(
        _write_held_sql(),
        [
            *rows.by_column(ModelCall, calls),
            [s.escalation.pk for s in done],
            [s.lease for s in done],
            [s.text for s in done],
            searchable,
        ],
    )
    held = []
    for pk, status, team_id in sorted(written):
        s, text = by_pk[pk]
        s.escalation.search_text = text
        # Decided or moved since it was claimed: the live push says so.
        s.escalation.status, s.escalation.team_id = status, team_id
        held.append(s)
    return held


def _write_held_orm(done: list[_Summary]) -> list[_Summary]:
    """_write_held through the ORM (embedded mode's SQLite)."""
    by_pk = {s.escalation.pk: s for s in done}
    held: list[_Summary] = []
    for pk, wanted_at, status, team_id in (
        Escalation.objects.select_for_update()
        .filter(pk__in=list(by_pk))
        .order_by("pk")
        .values_list("pk", "summary_wanted_at", "status", "team_id")
    ):
        s = by_pk[pk]
        if wanted_at == s.lease:
            s.escalation.status, s.escalation.team_id = status, team_id
            held.append(s)
    if not held:
        return held
    for s in held:
        s.escalation.search_text = search_text_for_action(s.escalation.action, s.text)
    Escalation.objects.filter(pk__in=[s.escalation.pk for s in held]).update(
        summary=Case(
            *(When(pk=s.escalation.pk, then=Value(s.text)) for s in held),
            output_field=TextField(),
        ),
        search_text=Case(
            *(When(pk=s.escalation.pk, then=Value(s.escalation.search_text)) for s in held),
            output_field=TextField(),
        ),
        summary_wanted_at=None,
    )
    return held
