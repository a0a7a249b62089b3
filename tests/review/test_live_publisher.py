"""The live pushes' publisher (review.live._Publisher): what it publishes is what the
channel layer's own subscribers read, in the order made, and a Redis that is down costs the
pushes of that moment, never the publisher."""

from __future__ import annotations

import asyncio
import logging

import redis
from django.conf import settings

from review import live

# The subscribers' clients, kept: a client collected closes its pool, subscription and all.
_clients: list[redis.Redis] = []


def _subscribed(target: live._PubSubTarget, group: str) -> redis.client.PubSub:
    client = redis.Redis.from_url(target.addresses[target.host_of(target.channel(group))])
    _clients.append(client)
    pubsub = client.pubsub()
    pubsub.subscribe(target.channel(group))
    # Subscribed once Redis confirms it: what is published from then on is heard.
    confirmed = pubsub.get_message(timeout=5)
    assert confirmed is not None and confirmed["type"] == "subscribe"
    return pubsub


def _read(target: live._PubSubTarget, pubsub: redis.client.PubSub, n: int) -> list[dict]:
    heard = []
    for _ in range(200):
        message = pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] == "message":
            heard.append(target.layer.deserialize(message["data"]))
        if len(heard) == n:
            break
    return heard


def test_a_burst_is_published_as_the_layer_would_in_the_order_made():
    layer = live.live_layer()
    target = live._pubsub_target
    assert target is not None and target.layer is layer
    assert target.prefix == f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}.review."

    async def as_channels_redis_names_it() -> tuple[str, int]:
        inner = layer._get_layer()  # the layer's own, on this loop
        return inner._get_group_channel_name(live.ALL_TEAMS_GROUP), len(inner._shards)

    assert asyncio.run(as_channels_redis_names_it()) == (
        target.channel(live.ALL_TEAMS_GROUP),
        len(target.addresses),
    )
    queue = _subscribed(target, live.ALL_TEAMS_GROUP)
    polls = _subscribed(target, "action.a1")
    publisher = live._Publisher()
    for i in range(3):
        publisher.post(layer, [live.ALL_TEAMS_GROUP], {"type": "escalation.changed", "id": i})
    publisher.post(layer, ["action.a1"], {"type": "action.decided", "id": "a1"})
    assert publisher.wait(5)
    changes: list[dict] = []
    while len(changes) < 3 and (heard := _read(target, queue, 1)):
        # Handed over together, the queue group's went as one message (or more, if the
        # thread took the first before the rest came): in order either way.
        changes += [c for m in heard for c in (m["changes"] if m["type"] == live.CHANGES else [m])]
    assert [c["id"] for c in changes] == [0, 1, 2]
    assert _read(target, polls, 1) == [{"type": "action.decided", "id": "a1"}]


def test_with_redis_down_the_pushes_are_lost_and_the_next_ones_go_out(monkeypatch, caplog):
    layer = live.live_layer()
    target = live._pubsub_target
    assert target is not None
    queue = _subscribed(target, live.ALL_TEAMS_GROUP)
    down = live._PubSubTarget(layer, target.prefix, ("redis://127.0.0.1:1/0",))
    publisher = live._Publisher()
    monkeypatch.setattr(live, "_pubsub_target", down)
    with caplog.at_level(logging.ERROR, logger="review.live"):
        publisher.post(layer, [live.ALL_TEAMS_GROUP], {"type": "escalation.changed", "id": "x"})
        assert publisher.wait(10)
    assert "could not push 1 of 1 queue updates" in caplog.text
    monkeypatch.setattr(live, "_pubsub_target", target)
    publisher.post(layer, [live.ALL_TEAMS_GROUP], {"type": "escalation.changed", "id": "y"})
    assert publisher.wait(5)
    assert [m["id"] for m in _read(target, queue, 1)] == ["y"]
