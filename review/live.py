"""Telling open review queues that an escalation changed. Id-only messages, sent after commit.

In embedded mode the channel layer is in-memory and lives on the server's event loop, while
the worker runs in threads; asyncio queues are not thread-safe, so sends from other threads
are handed to that loop with run_coroutine_threadsafe instead of a loop of their own.

With Redis, sends from synchronous code (workers, views, the bench's producers) go through
one long-lived publisher thread per process (`_Publisher`). `async_to_sync` would start a
thread and a fresh event loop for every send, and channels_redis keeps its connection pool
per loop, so every push paid for a new thread, a new loop and a new Redis connection: in
the review bench, on-commit hook to group_send done took 77 ms (p50); with one loop, 11 ms.
Those sends are handed over, not waited for (see `_Publisher`): a commit that announces a
batch (a group round's escalations, the summary writer's) goes out as one burst, and a
burst for the pub/sub layer as one pipeline of PUBLISH on a plain Redis client.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from celery.signals import worker_process_shutdown
from channels.layers import get_channel_layer
from channels_redis.utils import _consistent_hash, decode_hosts
from django.conf import settings

from workflows.events import Event

log = logging.getLogger(__name__)

# Every change goes to this one group, naming the teams it concerns; each server process
# subscribes once (QueueHub) and hands it to its own pages in memory. One group per team,
# with every page in it, cost a channel-layer message per page per change: with channels_redis
# a process reads those one Redis round trip at a time, and at 50 changes a second to four
# pages that queue grew without bound (seconds of delay, measured) while daphne sat idle.
ALL_TEAMS_GROUP = "queue.all"
# A burst of changes sent to ALL_TEAMS_GROUP as one message (`_Publisher`), which the hub
# hands to its pages one change at a time, as if each had come alone.
CHANGES = "escalation.changes"
CHANGES_MAX = 100

_server_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    with _loop_lock:
        _server_loop = loop


def announce_escalation(event: Event) -> None:
    """Subscribed (review.apps) to escalation events, after commit: tell every queue page of
    the escalation's team(s) that it changed."""
    teams = [event.ids["team_id"]]
    previous = event.ids.get("previous_team_id")
    if previous is not None and previous != teams[0]:
        teams.append(previous)
    message = {
        "type": "escalation.changed",
        "id": event.ids["escalation_id"],
        "teams": teams,
        # Names this one change: the pages of a process load the row once between them.
        "seq": uuid.uuid4().hex,
    }
    send_to_groups([ALL_TEAMS_GROUP], message)


class QueuePage(Protocol):
    def deliver(self, message: dict[str, Any]) -> None: ...


class QueueHub:
    """This process's one subscription to queue changes, fanned out to its pages in memory.

    A page joins before it reads its snapshot, and joining waits for the subscription, so
    nothing committed after the snapshot's read can be missed. Deliveries never block: each
    page queues the message and handles its own in order.
    """

    # The channel layer forgets group members after a day (channels_redis group_expiry).
    REJOIN_SECONDS = 3600.0

    def __init__(self) -> None:
        self.pages: set[QueuePage] = set()
        self._channel: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Lock()

    async def join(self, page: QueuePage) -> None:
        async with self._ready:
            if self._task is None or self._task.done():
                layer = live_layer()
                assert layer is not None
                self._channel = await layer.new_channel("review-hub.")
                await layer.group_add(ALL_TEAMS_GROUP, self._channel)
                subscribed = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._run(layer, self._channel, subscribed))
                # Redis pub/sub confirms a subscription asynchronously: a marker of our own
                # coming back proves this process hears every change published from now.
                await layer.group_send(ALL_TEAMS_GROUP, {"type": "hub.ready", "id": self._channel})
                await asyncio.wait_for(asyncio.shield(subscribed), timeout=10)
        self.pages.add(page)

    def leave(self, page: QueuePage) -> None:
        self.pages.discard(page)

    async def _run(self, layer: Any, channel: str, subscribed: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        joined = loop.time()
        try:
            while True:
                try:
                    message = await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # channels_redis blocks 5 s for a message and redis-py times reads out
                    # at 5 s: a quiet hub sees a timeout every few seconds, and nothing is
                    # lost by it (the message stays in the layer's backup queue).
                    if type(exc).__name__ != "TimeoutError":
                        log.exception("queue hub: receive failed; retrying")
                        await asyncio.sleep(0.5)
                    continue
                if message.get("type") == "hub.ready":
                    if message.get("id") == channel and not subscribed.done():
                        subscribed.set_result(None)
                    continue
                for change in message["changes"] if message.get("type") == CHANGES else [message]:
                    for page in list(self.pages):
                        page.deliver(change)
                if loop.time() - joined > self.REJOIN_SECONDS:
                    await layer.group_add(ALL_TEAMS_GROUP, channel)
                    joined = loop.time()
        finally:
            with contextlib.suppress(BaseException):
                await layer.group_discard(ALL_TEAMS_GROUP, channel)


# One hub per event loop: daphne has one; tests run each scenario on a loop of its own.
_hubs: dict[asyncio.AbstractEventLoop, QueueHub] = {}


def queue_hub() -> QueueHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        for closed in [other for other in _hubs if other.is_closed()]:
            del _hubs[closed]
        hub = _hubs[loop] = QueueHub()
    return hub


def send_to_groups(groups: list[str], message: dict[str, Any]) -> None:
    """Publish `message` to `groups` on live_layer(), which is where their listeners (the
    QueueHub, the API's long-polls) must subscribe."""
    layer = live_layer()
    if layer is None:
        return

    async def _send() -> None:
        await asyncio.gather(*(layer.group_send(group, message) for group in groups))

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
            _publisher().post(layer, groups, message)
        # In-memory layer and no server loop: nobody can be listening.
    except Exception:
        # A lost push costs a reviewer a refresh, never a decision: the queue re-syncs on
        # (re)connect from the database, which is the truth.
        log.exception("could not push queue update for %s", message.get("id"))


_pubsub_layer: Any = None


def live_layer() -> Any:
    """The channel layer every live push travels on: the queue's changes and the decisions
    that wake the API's long-polls (api.hooks), sent by send_to_groups.

    With Redis, Redis pub/sub (channels_redis's RedisPubSubChannelLayer, on the configured
    hosts and prefix) rather than the configured RedisChannelLayer: that one reads a
    process's messages one Redis round trip (two, with its backup-queue cleanup) at a time,
    and on this loaded 2-core machine the hub's reads fell 80-270 ms (p50) behind 50
    changes a second, measured by stage; a subscription gets them pushed, several to a
    read. Pub/sub delivers at most once, and only to processes subscribed at the time:
    that is what the queue needs (a page re-reads its window once changes stop, and a
    reconnect re-syncs from the database) and a long-poll too (it re-reads the database
    every few seconds). Embedded mode keeps its in-memory layer.
    """
    global _pubsub_layer
    layer = get_channel_layer()
    if type(layer).__name__ != "RedisChannelLayer":
        return layer
    if _pubsub_layer is None:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        default: dict[str, Any] = settings.CHANNEL_LAYERS["default"]
        config = default.get("CONFIG", {})
        global _pubsub_target
        hosts, prefix = config.get("hosts"), f"{config.get('prefix', 'asgi')}.review."
        _pubsub_layer = RedisPubSubChannelLayer(hosts=hosts, prefix=prefix)
        decoded = decode_hosts(hosts)
        # Plain addresses (what services.py configures): the publisher's own clients. A
        # sentinel set-up keeps the layer's own sends.
        if all(set(h) <= {"address", "socket_timeout"} for h in decoded):
            _pubsub_target = _PubSubTarget(
                _pubsub_layer, prefix, tuple(str(h["address"]) for h in decoded)
            )
    return _pubsub_layer


def _is_in_memory(layer: object) -> bool:
    return type(layer).__name__ == "InMemoryChannelLayer"


class _Publisher:
    """One daemon thread, for this process's sends to the channel layer.

    A send is handed over and not waited for: the after-commit hooks of one transaction
    announce each escalation in turn (a group round opens up to a hundred, the summary
    writer writes 32 at a time), and a round trip to this thread for each cost more CPU
    than the send itself (143 us of CPU a push waited for; handed over, and the queue
    group's of a burst sent as one message, 7 us: measured over 3,000). What is handed over
    while a burst is being sent goes out in the next one, so pushes leave in the order
    they were made: a change never overtakes the one before it. A process that
    exits right after committing (a command, a test) waits for what it handed over
    (`_flush_at_exit`).

    A burst for live_layer()'s Redis pub/sub goes out as one pipeline of PUBLISH per Redis
    host, on a plain synchronous client: the channel and bytes channels_redis would publish
    (`_PubSubTarget`), without an event loop's turn, an asyncio lock and a task per push
    (about 110 us of CPU each through channels_redis on this machine, and four pushes a
    decided run). Another layer's sends go through its own group_send, on an event loop
    this thread keeps for them."""

    # Past this many waiting (the layer unreachable for long), the oldest are dropped: a
    # lost push costs a reviewer a refresh, an unbounded backlog the process.
    MAX_WAITING = 10_000
    TIMEOUT = 5.0

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        self._waiting: list[tuple[Any, list[str], dict[str, Any]]] = []
        self._idle = threading.Event()
        self._idle.set()
        self._clients: dict[str, redis.Redis] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        thread = threading.Thread(target=self._run, name="review-live-publisher", daemon=True)
        thread.start()

    def post(self, layer: Any, groups: list[str], message: dict[str, Any]) -> None:
        with self._lock:
            if len(self._waiting) >= self.MAX_WAITING:
                dropped = self._waiting.pop(0)
                log.warning("live push backlog full; dropped the push for %s", dropped[2].get("id"))
            self._waiting.append((layer, groups, message))
            self._idle.clear()
            self._more.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._idle.set()
                    self._more.wait()
                burst, self._waiting = self._waiting, []
            try:
                self._send(_merged(burst))
            except Exception:  # the thread must outlive any one burst
                log.exception("queue updates: a burst of %d was not sent", len(burst))

    def _send(self, sends: list[tuple[Any, str, Any]]) -> None:
        failed: list[BaseException] = []
        # One deadline for the burst, as when its sends went together: a layer that does
        # not answer holds the publisher TIMEOUT per burst, not per push.
        deadline = time.monotonic() + self.TIMEOUT
        pipelines: dict[int, Any] = {}
        target = _pubsub_target
        for layer, group, message in sends:
            if target is not None and layer is target.layer:
                channel = target.channel(group)
                host = target.host_of(channel)
                if host not in pipelines:
                    pipelines[host] = self._client(target, host).pipeline(transaction=False)
                # In the order made: one host's pushes (a group's, all of them) keep it.
                pipelines[host].publish(channel, layer.serialize(message))
                continue
            try:
                left = max(deadline - time.monotonic(), 0.0)
                self._other_loop().run_until_complete(
                    asyncio.wait_for(layer.group_send(group, message), timeout=left)
                )
            except Exception as exc:
                failed += [exc]
        for pipeline in pipelines.values():
            try:
                pipeline.execute()
            except Exception as exc:
                failed += [exc] * len(pipeline)  # its pushes, all lost
        if failed:
            # A lost push costs a reviewer a refresh, never a decision: the queue
            # re-syncs on (re)connect from the database, which is the truth.
            log.error(
                "could not push %d of %d queue updates: %r", len(failed), len(sends), failed[0]
            )

    def _client(self, target: _PubSubTarget, host: int) -> redis.Redis:
        address = target.addresses[host]
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = redis.Redis.from_url(
                address,
                socket_timeout=self.TIMEOUT,
                socket_connect_timeout=self.TIMEOUT,
            )
        return client

    def _other_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def wait(self, timeout: float) -> bool:
        """Until what was handed over has been sent; False if `timeout` passed first."""
        return self._idle.wait(timeout)


@dataclass(frozen=True)
class _PubSubTarget:
    """Where live_layer()'s pub/sub sends a group's messages, worked out as channels_redis
    does (RedisPubSubLoopLayer: the group's channel name, the host by consistent hash, the
    layer's serializer): what `_Publisher` publishes to without the layer's event loop. The
    QueueHub and the long-polls subscribe through the layer itself, so a change of that
    naming in channels_redis shows in the hub's tests."""

    layer: Any
    prefix: str
    addresses: tuple[str, ...]

    def channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    def host_of(self, channel: str) -> int:
        return int(_consistent_hash(channel, len(self.addresses)))


_pubsub_target: _PubSubTarget | None = None


def _merged(burst: list[tuple[Any, list[str], dict[str, Any]]]) -> list[tuple[Any, str, Any]]:
    """A burst's sends, those to ALL_TEAMS_GROUP as few messages (CHANGES): each is a
    publish, and a read for every hub that hears it. Other groups' listeners (the API's
    long-polls) take their messages one at a time, as sent."""
    sends: list[tuple[Any, str, Any]] = []
    changes: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
    for layer, groups, message in burst:
        for group in groups:
            if group == ALL_TEAMS_GROUP:
                changes.setdefault(id(layer), (layer, []))[1].append(message)
            else:
                sends.append((layer, group, message))
    for layer, messages in changes.values():
        for i in range(0, len(messages), CHANGES_MAX):
            part = messages[i : i + CHANGES_MAX]
            one = part[0] if len(part) == 1 else {"type": CHANGES, "changes": part}
            sends.append((layer, ALL_TEAMS_GROUP, one))
    return sends


_publisher_instance: _Publisher | None = None
_publisher_lock = threading.Lock()


def _publisher() -> _Publisher:
    global _publisher_instance
    with _publisher_lock:
        # A forked child (a celery pool process) has no copy of the parent's thread.
        if _publisher_instance is None or _publisher_instance.pid != os.getpid():
            _publisher_instance = _Publisher()
        return _publisher_instance


@atexit.register
def _flush_at_exit(**_: Any) -> None:
    publisher = _publisher_instance
    if publisher is not None and publisher.pid == os.getpid():
        publisher.wait(_Publisher.TIMEOUT)


# A Celery pool process (the engine's drains, the summary writer) ends with os._exit, past
# atexit: its last pushes are waited for when the pool tells it to stop.
worker_process_shutdown.connect(_flush_at_exit, weak=False, dispatch_uid="review-live-flush")
