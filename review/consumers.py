"""The live queue's websocket: session-authenticated, origin-checked (in config/asgi.py).

It joins its groups *before* sending the snapshot, so an escalation created between the page
load and the subscription is in the snapshot or arrives as an event: never lost.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from escalations.access import team_ids_for

from .live import ALL_TEAMS_GROUP, register_server_loop, team_group
from .queue import open_escalations, render_row, render_snapshot


class ReviewQueueConsumer(AsyncWebsocketConsumer):
    groups_joined: list[str]

    async def connect(self) -> None:
        register_server_loop(asyncio.get_running_loop())
        self.groups_joined = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        teams = await database_sync_to_async(team_ids_for)(user)
        groups = [ALL_TEAMS_GROUP] if teams is None else [team_group(t) for t in teams]
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.accept()
        await self.send(text_data=await database_sync_to_async(render_snapshot)(user))

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The queue is read-only over the socket; decisions go through the decide action.
        return

    async def escalation_changed(self, event: dict[str, Any]) -> None:
        html = await database_sync_to_async(self._render_change)(event["id"])
        await self.send(text_data=html)

    def _render_change(self, escalation_id: str) -> str:
        user = self.scope["user"]
        pk = uuid.UUID(escalation_id)
        # Access is re-checked per event: group membership alone never decides what is shown.
        esc = open_escalations(user).filter(pk=pk).first()
        parts = [f'<div id="esc-{pk}" hx-swap-oob="delete"></div>']
        if esc is not None:
            parts.append(f'<div hx-swap-oob="afterbegin:#queue-rows">{render_row(esc)}</div>')
        count = open_escalations(user).count()
        parts.append(render_to_string("review/queue.html#count", {"open_count": count}))
        return "".join(parts)
