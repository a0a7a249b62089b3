"""The live queue's websocket refuses frames over its small limit and closes the socket."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from tests.review.test_consumer import _consumer_connections, _open  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("kind", ["text", "bytes"])
def test_a_megabyte_frame_is_refused_and_the_socket_closed(alice, kind):
    async def scenario():
        ws, _ = await _open(alice)
        if kind == "text":
            await ws.send_to(text_data="x" * 1_000_000)
        else:
            await ws.send_to(bytes_data=b"x" * 1_000_000)
        closed = await ws.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 1009}
        await ws.disconnect()

    async_to_sync(scenario)()


def test_small_frames_are_ignored_and_the_socket_stays_open(alice):
    async def scenario():
        ws, _ = await _open(alice)
        await ws.send_to(text_data="x" * settings.WS_MAX_FRAME_BYTES)
        assert await ws.receive_nothing(timeout=0.5)
        await ws.disconnect()

    async_to_sync(scenario)()
