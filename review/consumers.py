"""The live queue's websocket: session-authenticated, origin-checked (in config/asgi.py).

Each connection renders for its own page: the filters it was opened with (the page's query
string) or the one escalation a detail page watches. It joins its groups *before* sending
the snapshot, so a change between page load and subscription is in the snapshot or arrives
as an event: never lost. A reconnect is a new connection, so it re-syncs the same way.

Why the server renders per connection instead of signalling "changed" and letting every
page re-fetch its list over HTTP: at 50 changes a second, re-fetching would cost every open
page a full list-and-counts request per change, and rows would still land wherever the
re-fetch put them. Here one change costs each connection one indexed id query for its own
window (the filtered, SLA-sorted first QUEUE_LIMIT ids); the diff against what the page
shows yields exact swaps: delete what left, insert what arrived *before its successor*,
replace what changed in place. Counts are an aggregate over the whole queue, so they are
coalesced: sent at once, then at most every COUNTS_INTERVAL while changes keep coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404
from django.template.loader import render_to_string

from escalations.access import get_escalation_for, team_ids_for

from .live import ALL_TEAMS_GROUP, register_server_loop, team_group
from .queue import (
    QueueFilters,
    queue_ids,
    render_counts,
    render_row,
    render_row_replacement,
    render_snapshot,
    rows_by_id,
    undecided_for,
)

COUNTS_INTERVAL = 0.25


def _db(func: Any) -> Any:
    """Run ORM work in the thread pool rather than Channels' one shared sync thread.

    With the default (thread_sensitive), every open socket's render queues behind every
    other's on a single thread: fifty events a second times a few dozen pages is seconds
    of backlog. Each consumer still handles its own events one at a time, in order.
    """
    return database_sync_to_async(func, thread_sensitive=False)


# Close codes: the page's script sends people to log in on 4401 and never retries 4403/4404.
UNAUTHENTICATED = 4401
FORBIDDEN = 4403
NOT_FOUND = 4404


class ReviewQueueConsumer(AsyncWebsocketConsumer):
    groups_joined: list[str]
    filters: QueueFilters
    watch: uuid.UUID | None
    shown: list[str]
    _counts_task: asyncio.Task[None] | None
    _counts_dirty: bool
    _diff_task: asyncio.Task[None] | None
    _pending: set[str]

    async def connect(self) -> None:
        register_server_loop(asyncio.get_running_loop())
        self.groups_joined = []
        self.shown = []
        self._counts_task = None
        self._counts_dirty = False
        self._diff_task = None
        self._pending = set()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        params = {
            k: v[-1] for k, v in parse_qs(self.scope.get("query_string", b"").decode()).items()
        }
        self.filters = QueueFilters.from_params(params)
        self.watch = None
        if params.get("watch"):
            try:
                self.watch = uuid.UUID(params["watch"])
                await _db(get_escalation_for)(user, self.watch)
            except (ValueError, Http404):
                await self.close(code=NOT_FOUND)
                return
        teams = await _db(team_ids_for)(user)
        groups = [ALL_TEAMS_GROUP] if teams is None else [team_group(t) for t in teams]
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.accept()
        if self.watch is not None:
            await self.send(text_data=await _db(self._render_watched)())
        else:
            html, self.shown = await _db(render_snapshot)(user, self.filters)
            await self.send(text_data=html)

    async def disconnect(self, code: int) -> None:
        for task in (self._counts_task, self._diff_task):
            if task is not None:
                task.cancel()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Read-only: every change goes through an action over HTTP, with its CSRF check.
        return

    async def escalation_changed(self, event: dict[str, Any]) -> None:
        try:
            pk = str(uuid.UUID(str(event.get("id"))))
        except ValueError:
            return
        if self.watch is not None:
            if pk == str(self.watch):
                await self.send(text_data=await _db(self._render_watched)())
            return
        # Under load, changes arriving while this page's last diff is still rendering are
        # folded into the next one: one window query per batch, not per change, so a
        # burst never builds a backlog that delays what the reviewer sees.
        self._pending.add(pk)
        if self._diff_task is None or self._diff_task.done():
            self._diff_task = asyncio.create_task(self._flush_changes())

    async def _flush_changes(self) -> None:
        while self._pending:
            changed, self._pending = self._pending, set()
            html = await _db(self._render_changes)(changed)
            if html:
                with contextlib.suppress(Exception):
                    await self.send(text_data=html)
            self._schedule_counts()

    # --- the queue page -------------------------------------------------------------------

    def _render_changes(self, changed: set[str]) -> str:
        """Swaps that turn what the page shows into the connection's current window.

        Access is re-checked here (the window query goes through the access helper): group
        membership alone never decides what a page is sent.
        """
        user = self.scope["user"]
        window = queue_ids(undecided_for(user), self.filters, user)
        old, new = self.shown, window
        old_set, new_set = set(old), set(new)
        removed = [pk for pk in old if pk not in new_set]
        moved: set[str] = set()
        kept_old = [pk for pk in old if pk in new_set]
        kept_new = [pk for pk in new if pk in old_set]
        if kept_old != kept_new:
            if [p for p in kept_old if p not in changed] != [
                p for p in kept_new if p not in changed
            ]:
                # Changes cannot reorder the unchanged rows among themselves; if they did,
                # this page missed something: start over from the truth.
                html, self.shown = render_snapshot(user, self.filters)
                return html
            # e.g. an SLA due time changed: those rows go elsewhere.
            moved = {pk for pk in changed if pk in old_set and pk in new_set}
        added = [pk for pk in new if pk not in old_set or pk in moved]
        in_place = [pk for pk in new if pk in changed and pk in old_set and pk not in moved]
        rows = rows_by_id(user, added + in_place)
        parts = [f'<div id="esc-{pk}" hx-swap-oob="delete"></div>' for pk in removed]
        parts += [f'<div id="esc-{pk}" hx-swap-oob="delete"></div>' for pk in moved]
        for pk in in_place:
            if pk in rows:
                parts.append(render_row_replacement(rows[pk], user=user))
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
        self.shown = [pk for pk in new if pk in old_set or pk in rows]
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
            html = await _db(render_counts)(user, self.filters)
            with contextlib.suppress(Exception):
                await self.send(text_data=html)
            await asyncio.sleep(COUNTS_INTERVAL)
            if not self._counts_dirty:
                return

    # --- one escalation's page -------------------------------------------------------------

    def _render_watched(self) -> str:
        from .views import decision_panel_context

        user = self.scope["user"]
        try:
            ctx = decision_panel_context(user, self.watch)
        except Http404:
            # Moved to a team this person is not on: say so instead of going quiet.
            return render_to_string("review/detail.html#gone", {"oob": True})
        return render_to_string("review/detail.html#pushed", {**ctx, "oob": True})
