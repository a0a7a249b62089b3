"""The live queue's websocket: session-authenticated, origin-checked (in config/asgi.py).

Each connection renders for its own page: the filters and page it was opened with (the
page's query string) or the one escalation a detail page watches. It joins its process's
QueueHub *before* reading the snapshot, so a change between page load and subscription is
in the snapshot or arrives as an event: never lost. A reconnect is a new connection, so it
re-syncs the same way.

Why the server renders instead of signalling "changed" and letting every page re-fetch its
list over HTTP: at 50 changes a second, re-fetching would cost every open page a full
list-and-counts request per change, and rows would still land wherever the re-fetch put
them. Here a change costs one query per daphne process, however many pages are open: the
process's one subscription (review.live.QueueHub) hands each message to its pages, and
the row is loaded once (`load_row`, keyed by the message's `seq`) as soon as it is handed
over. Each page then decides in memory, from the row's team, facet values and place in
the order, whether it belongs in its window (the filtered, SLA-sorted PAGE_SIZE rows after
the page's cursor): insert it before its successor, replace it in place, or ignore it.
Only a row leaving or moving within a window costs that page a window query (the diff
against what it shows yields exact swaps: delete what left, insert what arrived *before
its successor*). Counts are an aggregate over the queue, so they are coalesced: sent at
once, then at most every COUNTS_INTERVAL while changes keep coming; once they stop, the
page re-reads its window, so a page that missed a message is put right.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import connection
from django.http import Http404
from django.template.loader import render_to_string

from escalations.access import get_escalation_for, team_ids_for
from escalations.models import UNDECIDED_STATUSES

from .live import queue_hub, register_server_loop
from .queue import (
    PAGE_SIZE,
    InvalidFilter,
    QueueFilters,
    SortKey,
    cursor_key,
    load_row,
    queue_keys,
    render_counts,
    render_pager,
    render_row,
    render_snapshot,
    rows_by_id,
    undecided_for,
)
from .views import decision_panel_context

log = logging.getLogger(__name__)

COUNTS_INTERVAL = 1.0
# How long a loaded row is shared with the process's other pages after its message.
SHARED_LOAD_SECONDS = 5.0


# The consumers' database work runs on these threads. Without the web pool each keeps its
# connection: channels' database_sync_to_async closes the connection around every call, and
# with CONN_MAX_AGE = 0 (the default here) that meant a new PostgreSQL connection (a backend
# process forked, authenticated, set up) for every change on every open page. With the pool
# (config.asgi: daphne in production) each call gives its connection back when it returns:
# a pooled connection costs nothing to take again, and one kept by an idle thread was a pool
# slot no request could have (five threads: five of DB_POOL_MAX, gone for the process's
# life). A failed call drops its thread's connection, so a broken one is replaced on that
# thread's next call. Single-thread executors rather than one pool, so close_connections()
# reaches every one; the row loads of changes have threads of their own, so a burst of them
# never waits behind the pages' counts queries.


class _Threads:
    def __init__(self, name: str, n: int) -> None:
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{i}") for i in range(n)
        ]
        self.pending = [0] * n

    async def run[T](self, func: Callable[..., T], *args: Any) -> T:
        # The least busy thread.
        i = min(range(len(self.executors)), key=self.pending.__getitem__)
        self.pending[i] += 1
        try:
            loop = asyncio.get_running_loop()
            call = functools.partial(_call, func, *args)
            return await loop.run_in_executor(self.executors[i], call)
        finally:
            self.pending[i] -= 1


_pages_threads = _Threads("review-ws-db", 3)
_load_threads = _Threads("review-ws-load", 2)


def _call[T](func: Callable[..., T], *args: Any) -> T:
    try:
        result = func(*args)
    except Exception:
        connection.close()
        raise
    if getattr(connection, "pool", None) is not None:
        connection.close()  # back to the pool
    return result


async def _db[T](func: Callable[..., T], *args: Any) -> T:
    return await _pages_threads.run(func, *args)


def close_connections() -> None:
    """Close the consumers' database connections (tests: before the test database goes)."""
    for threads in (_pages_threads, _load_threads):
        for executor in threads.executors:
            # Looked up on the thread itself: each thread has its own connection object.
            executor.submit(lambda: connection.close()).result()


# seq of a message -> the load of its row, shared by every page of this process.
_loads: dict[str, asyncio.Future[dict[str, Any] | None]] = {}


def _load_started(message: dict[str, Any]) -> asyncio.Future[dict[str, Any] | None]:
    """The row of a changed escalation, loading from the moment the hub delivers it: the
    loads of a burst run side by side while each page applies its changes in order (a
    page that loaded as it got to each change waited out one query per change in turn,
    measured: most of the push latency under load)."""
    pk, seq = str(message.get("id")), str(message.get("seq") or "")
    future = _loads.get(seq) if seq else None
    if future is None:
        future = asyncio.ensure_future(_load_threads.run(load_row, pk))
        if seq:
            _loads[seq] = future
            asyncio.get_running_loop().call_later(SHARED_LOAD_SECONDS, _loads.pop, seq, None)
    return future


# Close codes: the page's script sends people to log in on 4401 and never retries
# 4400/4403/4404.
BAD_REQUEST = 4400
UNAUTHENTICATED = 4401
MESSAGE_TOO_BIG = 1009
FORBIDDEN = 4403
NOT_FOUND = 4404


class ReviewQueueConsumer(AsyncWebsocketConsumer):
    # No channel of its own: a page hears of changes from its process's QueueHub, in memory.
    # An own channel would only be read, by one blocking Redis call per page: with
    # channels_redis blocking 5 s and redis-py timing reads out at 5 s, an idle page's
    # receive failed and took the socket down after ~5 quiet seconds. (An alias with no
    # configuration gives no layer.)
    channel_layer_alias = "review-pages-use-the-hub"

    joined: bool
    filters: QueueFilters
    watch: uuid.UUID | None
    teams: frozenset[int] | None
    cursor: SortKey | None
    shown: list[str]
    keys: list[SortKey]
    more: bool
    _counts_task: asyncio.Task[None] | None
    _counts_dirty: bool
    # Held while this page's picture (shown, keys, more) is read and changed across awaits.
    _lock: asyncio.Lock
    _inbox: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[dict[str, Any] | None] | None]]
    _drain_task: asyncio.Task[None] | None

    async def connect(self) -> None:
        register_server_loop(asyncio.get_running_loop())
        self.joined = False
        self._inbox = asyncio.Queue()
        self._drain_task = None
        self.shown, self.keys, self.more = [], [], False
        self.cursor = None
        self._counts_task = None
        self._counts_dirty = False
        self._lock = asyncio.Lock()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(UNAUTHENTICATED)
            return
        try:
            params = {
                k: v[-1]
                for k, v in parse_qs(
                    self.scope.get("query_string", b"").decode(errors="replace")
                ).items()
            }
            self.filters = QueueFilters.from_params(params)
        except InvalidFilter:
            await self._refuse(BAD_REQUEST)
            return
        self.watch = None
        if params.get("watch"):
            try:
                self.watch = uuid.UUID(params["watch"])
                await _db(get_escalation_for, user, self.watch)
            except (ValueError, Http404):
                await self._refuse(NOT_FOUND)
                return
        teams = await _db(team_ids_for, user)
        self.teams = None if teams is None else frozenset(teams)
        await queue_hub().join(self)
        self.joined = True
        await self.accept()
        if self.watch is not None:
            await self.send(text_data=await _db(self._render_watched))
        else:
            self.cursor = await _db(cursor_key, user, self.filters)
            html, page = await _db(render_snapshot, user, self.filters)
            self.shown = page.ids
            self.keys = [r["key"] for r in page.rows]
            self.more = page.more
            await self.send(text_data=html)
        # Changes that arrived while the snapshot was read are applied after it.
        self._drain_task = asyncio.create_task(self._drain())

    async def _refuse(self, code: int) -> None:
        """Accept, then close with `code`: a socket closed before it is accepted reaches the
        browser as a failed handshake (1006, no code), which the page cannot tell from a
        network blip and retries forever; after an accept the page reads the code."""
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if self.joined:
            queue_hub().leave(self)
        for task in (self._counts_task, self._drain_task):
            if task is not None:
                task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Read-only: every change goes through an action over HTTP, with its CSRF check. A page
        # sends nothing but small pings, so an oversized frame is abuse: refuse it and close
        # (1009, "message too big"), rather than let a client make the server hold megabytes.
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            log.warning("websocket frame of %s bytes refused; closing", size)
            await self.close(code=MESSAGE_TOO_BIG)

    def deliver(self, message: dict[str, Any]) -> None:
        """From the hub: queued, never handled here (the hub serves every page)."""
        try:
            message["id"] = str(uuid.UUID(str(message.get("id"))))
        except ValueError:
            return
        teams = message.get("teams") or []
        # What a team group did: a page hears only of its own teams' escalations.
        if self.teams is None or self.teams.intersection(teams):
            row = _load_started(message) if self.watch is None else None
            self._inbox.put_nowait((message, row))

    async def _drain(self) -> None:
        while True:
            message, row = await self._inbox.get()
            try:
                await self._changed(message, row)
            except Exception:
                # One bad change must not stop the page's live updates.
                log.exception("review queue: could not apply change %s", message.get("id"))

    async def _changed(
        self, event: dict[str, Any], loading: asyncio.Future[dict[str, Any] | None] | None
    ) -> None:
        try:
            pk = str(uuid.UUID(str(event.get("id"))))
        except ValueError:
            return
        if self.watch is not None:
            if pk == str(self.watch):
                await self.send(text_data=await _db(self._render_watched))
            return
        assert loading is not None
        # Shielded: one page going away mid-load must not cancel the others' load.
        row = await asyncio.shield(loading)
        async with self._lock:
            html = self._apply(pk, row)
            if html is None:
                html = await _db(self._resync, {pk})
        if html:
            with contextlib.suppress(Exception):
                await self.send(text_data=html)
        self._schedule_counts()

    # --- the queue page -------------------------------------------------------------------

    def _visible(self, row: dict[str, Any] | None) -> bool:
        """Whether `row` belongs on this page, access re-checked: group membership alone
        never decides what a page is sent."""
        return (
            row is not None
            and row["status"] in UNDECIDED_STATUSES
            and (self.teams is None or row["team_id"] in self.teams)
            and self.filters.matches(row, self.scope["user"])
            and (self.cursor is None or row["key"] > self.cursor)
        )

    def _apply(self, pk: str, row: dict[str, Any] | None) -> str | None:
        """The swaps for one changed row, worked out in memory; None when this page needs
        its window re-read (the row left it or moved within it)."""
        user = self.scope["user"]
        visible = self._visible(row)
        shown = pk in self.shown
        if not visible:
            return None if shown else ""
        assert row is not None
        if shown:
            if self.keys[self.shown.index(pk)] != row["key"]:
                return None
            return render_row(row, user=user, oob=True)
        at = bisect.bisect(self.keys, row["key"])
        pager = self._pager_state()
        if at == len(self.shown) and (self.more or len(self.shown) >= PAGE_SIZE):
            # After this page's last row: the next page's, not this one's (whose pager may
            # now have a next page to offer).
            self.more = True
            return (
                render_pager(self.filters, self.shown, self.more)
                if (self._pager_state() != pager)
                else ""
            )
        target = (
            f"beforebegin:#esc-{self.shown[at]}"
            if at < len(self.shown)
            else ("beforeend:#queue-rows")
        )
        self.shown.insert(at, pk)
        self.keys.insert(at, row["key"])
        parts = [f'<div hx-swap-oob="{target}">{render_row(row, user=user, arrived=True)}</div>']
        if len(self.shown) > PAGE_SIZE:
            # Inserted first: the row pushed off the page may be the new row's successor.
            dropped = self.shown.pop()
            self.keys.pop()
            self.more = True
            parts.append(f'<div id="esc-{dropped}" hx-swap-oob="delete"></div>')
        if self._pager_state() != pager:
            parts.append(render_pager(self.filters, self.shown, self.more))
        return "".join(parts)

    def _pager_state(self) -> tuple[bool, str | None]:
        """What the pager shows: whether a next page exists, and where it starts."""
        return self.more, (self.shown[-1] if self.more and self.shown else None)

    def _resync(self, changed: set[str]) -> str:
        """Swaps that turn what the page shows into the connection's current window, read
        from the database (through the access helper)."""
        user = self.scope["user"]
        window = queue_keys(undecided_for(user), self.filters, user, self.cursor)
        more = len(window) > PAGE_SIZE
        window = window[:PAGE_SIZE]
        new = [pk for pk, _ in window]
        new_keys = dict(window)
        old = self.shown
        old_keys = dict(zip(self.shown, self.keys, strict=True))
        old_set, new_set = set(old), set(new)
        removed = [pk for pk in old if pk not in new_set]
        kept_old = [pk for pk in old if pk in new_set]
        kept_new = [pk for pk in new if pk in old_set]
        # A kept row whose place changed (its SLA due time, say) is moved: out, then in again.
        moved = {pk for pk in kept_new if old_keys[pk] != new_keys[pk]}
        if [p for p in kept_old if p not in moved] != [p for p in kept_new if p not in moved]:
            # Rows whose place did not change cannot have been reordered among themselves;
            # if they were, this page's picture is wrong: start over from the truth.
            html, page = render_snapshot(user, self.filters)
            self.shown, self.keys, self.more = page.ids, [r["key"] for r in page.rows], page.more
            return html
        added = [pk for pk in new if pk not in old_set or pk in moved]
        in_place = [pk for pk in new if pk in changed and pk in old_set and pk not in moved]
        rows = rows_by_id(user, added + in_place)
        parts = [f'<div id="esc-{pk}" hx-swap-oob="delete"></div>' for pk in removed]
        parts += [f'<div id="esc-{pk}" hx-swap-oob="delete"></div>' for pk in moved]
        for pk in in_place:
            if pk in rows:
                parts.append(render_row(rows[pk], user=user, oob=True))
        # Inserted last to first, so each row's successor is already on the page.
        added_set = set(added)
        for i in range(len(new) - 1, -1, -1):
            pk = new[i]
            if pk not in added_set or pk not in rows:
                continue
            after = new[i + 1] if i + 1 < len(new) else None
            target = f"beforebegin:#esc-{after}" if after else "beforeend:#queue-rows"
            row = render_row(rows[pk], user=user, arrived=True)
            parts.append(f'<div hx-swap-oob="{target}">{row}</div>')
        pager = self._pager_state()
        self.shown = [pk for pk in new if pk in old_set or pk in rows]
        self.keys = [new_keys[pk] for pk in self.shown]
        self.more = more
        if self._pager_state() != pager:
            parts.append(render_pager(self.filters, self.shown, self.more))
        return "".join(parts)

    def _schedule_counts(self) -> None:
        if self._counts_task is None or self._counts_task.done():
            self._counts_task = asyncio.create_task(self._send_counts())
        else:
            self._counts_dirty = True

    async def _send_counts(self) -> None:
        user = self.scope["user"]
        while True:
            self._counts_dirty = False
            html = await _db(render_counts, user, self.filters)
            with contextlib.suppress(Exception):
                await self.send(text_data=html)
            await asyncio.sleep(COUNTS_INTERVAL)
            if not self._counts_dirty:
                await self._check_window()
                return

    async def _check_window(self) -> None:
        """Once changes stop, re-read the window: a page that missed a message (the channel
        layer drops them past its capacity) is put right."""
        user = self.scope["user"]
        async with self._lock:
            # undecided_for reads the reviewer's teams: on the database thread, not the loop.
            window = await _db(
                lambda: queue_keys(undecided_for(user), self.filters, user, self.cursor)
            )
            if [pk for pk, _ in window[:PAGE_SIZE]] == self.shown:
                return
            html = await _db(self._resync, set())
        if html:
            with contextlib.suppress(Exception):
                await self.send(text_data=html)

    # --- one escalation's page -------------------------------------------------------------

    def _render_watched(self) -> str:
        user = self.scope["user"]
        try:
            ctx = decision_panel_context(user, self.watch)
        except Http404:
            # Moved to a team this person is not on: say so instead of going quiet.
            return render_to_string("review/detail.html#gone", {"oob": True})
        return render_to_string("review/detail.html#pushed", {**ctx, "oob": True})
