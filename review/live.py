"""Telling open review queues that an escalation changed. Id-only messages, sent after commit.

In embedded mode the channel layer is in-memory and lives on the server's event loop, while
the worker runs in threads; asyncio queues are not thread-safe, so sends from other threads
are handed to that loop with run_coroutine_threadsafe instead of a loop of their own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from escalations.models import Escalation

log = logging.getLogger(__name__)

ALL_TEAMS_GROUP = "queue.all"

_server_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def team_group(team_id: int) -> str:
    return f"queue.team.{team_id}"


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    with _loop_lock:
        _server_loop = loop


def announce_escalation(escalation: Escalation, *, previous_team_id: int | None = None) -> None:
    """On commit, tell the escalation's team(s) and the admins' group that it changed."""
    message = {"type": "escalation.changed", "id": str(escalation.pk)}
    groups = [team_group(escalation.team_id), ALL_TEAMS_GROUP]
    if previous_team_id is not None and previous_team_id != escalation.team_id:
        groups.append(team_group(previous_team_id))
    transaction.on_commit(lambda: send_to_groups(groups, message))


def send_to_groups(groups: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return

    async def _send() -> None:
        for group in groups:
            await layer.group_send(group, message)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    loop = _server_loop
    try:
        if running is not None:
            # Called from async code on some loop: schedule, never block it.
            running.create_task(_send())
        elif loop is not None and loop.is_running() and _is_in_memory(layer):
            asyncio.run_coroutine_threadsafe(_send(), loop).result(timeout=5)
        elif not _is_in_memory(layer):
            async_to_sync(_send)()
        # In-memory layer and no server loop: nobody can be listening.
    except Exception:
        # A lost push costs a reviewer a refresh, never a decision: the queue re-syncs on
        # (re)connect from the database, which is the truth.
        log.exception("could not push queue update for %s", message.get("id"))


def _is_in_memory(layer: object) -> bool:
    return type(layer).__name__ == "InMemoryChannelLayer"
