"""The live queue's websocket, through the real ASGI stack and the Redis channel layer."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from config.asgi import application
from escalations.actions import (
    claim_escalation,
    decide_escalation,
    reassign_escalation,
    release_escalation,
)
from escalations.models import Verdict, Via
from review.consumers import close_connections
from tests.review.factories import escalate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _consumer_connections():
    yield
    # The consumers keep their database connections between calls; the test database must
    # not be left with them open.
    close_connections()


ORIGIN = (b"origin", b"http://localhost")
db = database_sync_to_async


def _cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())


def _communicator(*headers, query: str = "") -> WebsocketCommunicator:
    path = "/ws/review/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=[(b"host", b"localhost"), *headers])


async def _open(user, query: str = "") -> tuple[WebsocketCommunicator, str]:
    ws = _communicator(ORIGIN, await db(_cookie)(user), query=query)
    connected, code = await ws.connect()
    assert connected, code
    return ws, await ws.receive_from(timeout=5)


async def _until(ws: WebsocketCommunicator, check: Callable[[str], bool], timeout=5.0) -> str:
    """Messages until one passes `check` (counts and rows arrive as separate messages)."""
    seen: list[str] = []
    while True:
        try:
            message = await ws.receive_from(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"no matching message; got {seen}") from None
        seen.append(message)
        if check(message):
            return message


def _row_ids(html: str) -> list[str]:
    return re.findall(r'<article id="esc-([0-9a-f-]+)"', html)


async def _refused_with(ws: WebsocketCommunicator) -> int:
    """Accepted, then closed with a code the page's script reads (a socket closed before it
    is accepted reaches the browser as a failed handshake with no code at all)."""
    connected, _ = await ws.connect()
    assert connected
    message = await ws.receive_output(timeout=5)
    assert message["type"] == "websocket.close"
    return int(message["code"])


def test_anonymous_connections_are_told_to_log_in():
    async def scenario():
        assert await _refused_with(_communicator(ORIGIN)) == 4401

    async_to_sync(scenario)()


@pytest.mark.parametrize("query", ["team=%00", "agent=a%00b", "workflow=%01", "risk=%7F"])
def test_junk_filters_close_the_socket_as_a_bad_request(alice, query):
    cookie = _cookie(alice)

    async def scenario():
        assert await _refused_with(_communicator(ORIGIN, cookie, query=query)) == 4400

    async_to_sync(scenario)()


def test_unknown_filter_values_give_an_empty_live_queue(alice, agent, policies):
    escalate(agent, subject="Hidden by the filter")

    async def scenario():
        ws, snapshot = await _open(alice, "team=%3Cscript%3E&risk=zzz&after=nope&%00=1")
        assert 'id="queue-rows"' in snapshot and not _row_ids(snapshot)
        await ws.disconnect()

    async_to_sync(scenario)()


def test_connections_from_a_foreign_origin_are_refused(alice):
    cookie = _cookie(alice)

    async def scenario():
        connected, _ = await _communicator((b"origin", b"http://evil.example"), cookie).connect()
        assert not connected
        connected, _ = await _communicator(cookie).connect()  # no Origin at all
        assert not connected

    async_to_sync(scenario)()


def test_the_snapshot_is_sorted_by_sla_and_new_rows_land_before_their_successor(
    alice, agent, policies
):
    later = escalate(agent, subject="Due in an hour", due_in=timedelta(hours=1))
    sooner = escalate(agent, subject="Due in ten minutes", due_in=timedelta(minutes=10))

    async def scenario():
        ws, snapshot = await _open(alice)
        assert 'id="queue-rows"' in snapshot and 'hx-swap-oob="true"' in snapshot
        assert _row_ids(snapshot) == [str(sooner.pk), str(later.pk)]

        middle = await db(escalate)(agent, subject="Half an hour", due_in=timedelta(minutes=30))
        pushed = await _until(ws, lambda m: "Half an hour" in m)
        assert f'hx-swap-oob="beforebegin:#esc-{later.pk}"' in pushed
        assert "arrived" in pushed

        urgent = await db(escalate)(agent, subject="Five minutes", due_in=timedelta(minutes=5))
        pushed = await _until(ws, lambda m: "Five minutes" in m)
        assert f'hx-swap-oob="beforebegin:#esc-{sooner.pk}"' in pushed

        await db(escalate)(agent, subject="Whenever")
        pushed = await _until(ws, lambda m: "Whenever" in m)
        assert 'hx-swap-oob="beforeend:#queue-rows"' in pushed

        # A page reloaded now shows exactly the order the pushes built.
        _, fresh = await _open(alice)
        assert _row_ids(fresh)[:4] == [
            str(urgent.pk),
            str(sooner.pk),
            str(middle.pk),
            str(later.pk),
        ]
        await ws.disconnect()

    async_to_sync(scenario)()


def test_counts_follow_changes_live(alice, agent, policies):
    escalate(agent, subject="First")

    async def scenario():
        ws, snapshot = await _open(alice)
        assert re.search(r'id="queue-count"[^>]*>1<', snapshot)
        await db(escalate)(agent, subject="Second")
        counts = await _until(ws, lambda m: re.search(r'id="queue-count"[^>]*>2<', m) is not None)
        assert 'id="queue-facets"' in counts
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_claim_changes_the_row_in_place_and_a_decision_elsewhere_removes_it(
    alice, carol, agent, policies
):
    esc = escalate(agent, subject="Refund please")

    async def scenario():
        ws, _ = await _open(alice)
        await db(claim_escalation)(escalation_id=esc.pk, user=carol)
        changed = await _until(ws, lambda m: str(esc.pk) in m)
        assert f'<article id="esc-{esc.pk}"' in changed
        assert 'hx-swap-oob="true"' in changed and "delete" not in changed
        assert "claimed by carol" in changed

        await db(decide_escalation)(
            escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.SLACK
        )
        gone = await _until(ws, lambda m: str(esc.pk) in m)
        assert gone == f'<div id="esc-{esc.pk}" hx-swap-oob="delete"></div>'
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_filtered_page_only_receives_rows_matching_its_filters(alice, agent, policies):
    async def scenario():
        ws, _ = await _open(alice, "action_type=update_crm")
        reply = await db(escalate)(agent, subject="A reply", action_type="send_reply")
        crm = await db(escalate)(agent, subject="A CRM update", action_type="update_crm")
        pushed = await _until(ws, lambda m: str(crm.pk) in m)
        assert str(reply.pk) not in pushed
        while not await ws.receive_nothing(timeout=0.6):
            assert str(reply.pk) not in await ws.receive_from()
        await ws.disconnect()

    async_to_sync(scenario)()


def test_mine_shows_what_i_claim_and_drops_what_i_release(alice, agent, policies):
    esc = escalate(agent, subject="Mine soon")

    async def scenario():
        ws, snapshot = await _open(alice, "mine=1")
        assert _row_ids(snapshot) == []
        await db(claim_escalation)(escalation_id=esc.pk, user=alice)
        arrived = await _until(ws, lambda m: str(esc.pk) in m)
        assert "beforeend:#queue-rows" in arrived and "claimed by you" in arrived
        await db(release_escalation)(escalation_id=esc.pk, user=alice)
        left = await _until(ws, lambda m: str(esc.pk) in m)
        assert 'hx-swap-oob="delete"' in left
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_reviewer_never_receives_another_teams_events(bob, alice, agent, policies):
    async def scenario():
        ws, snapshot = await _open(bob)
        esc = await db(escalate)(agent, subject="Support only")
        await db(claim_escalation)(escalation_id=esc.pk, user=alice)
        assert "Support only" not in snapshot
        assert await ws.receive_nothing(timeout=1)
        await ws.disconnect()

    async_to_sync(scenario)()


def test_reassigning_moves_the_row_from_one_teams_page_to_the_others(
    alice, bob, billing, agent, policies
):
    esc = escalate(agent, subject="Actually billing")

    async def scenario():
        alice_ws, alice_snapshot = await _open(alice)
        bob_ws, bob_snapshot = await _open(bob)
        assert str(esc.pk) in alice_snapshot and str(esc.pk) not in bob_snapshot
        await db(reassign_escalation)(escalation_id=esc.pk, user=alice, team_id=billing.pk)
        left = await _until(alice_ws, lambda m: str(esc.pk) in m)
        assert 'hx-swap-oob="delete"' in left
        arrived = await _until(bob_ws, lambda m: str(esc.pk) in m)
        assert "Actually billing" in arrived and "beforeend:#queue-rows" in arrived
        await alice_ws.disconnect()
        await bob_ws.disconnect()

    async_to_sync(scenario)()


def test_agent_text_in_a_pushed_row_is_escaped(alice, agent, policies):
    async def scenario():
        ws, _ = await _open(alice)
        await db(escalate)(agent, subject='<script>alert("x")</script><img src=x onerror=alert(1)>')
        pushed = await _until(ws, lambda m: "alert" in m)
        assert "<script>" not in pushed and "<img" not in pushed
        assert "&lt;script&gt;" in pushed
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_detail_page_sees_a_decision_made_in_slack(alice, carol, agent, policies):
    esc = escalate(agent, subject="Watch me")

    async def scenario():
        ws, state = await _open(alice, f"watch={esc.pk}")
        assert 'id="live-state"' in state and "Unclaimed" in state
        await db(decide_escalation)(
            escalation_id=esc.pk, user=carol, verdict=Verdict.REJECT, via=Via.SLACK, reason="No"
        )
        decided = await _until(ws, lambda m: "Decided" in m)
        assert "carol" in decided and "via Slack" in decided
        assert 'id="esc-status"' in decided and "Rejected" in decided
        await ws.disconnect()

    async_to_sync(scenario)()


def test_watching_another_teams_escalation_is_refused(bob, agent, policies):
    esc = escalate(agent, subject="Not for bob")
    cookie = _cookie(bob)

    async def scenario():
        ws = _communicator(ORIGIN, cookie, query=f"watch={esc.pk}")
        assert await _refused_with(ws) == 4404

    async_to_sync(scenario)()


def test_a_full_page_takes_in_a_sooner_row_and_lets_its_last_one_go(
    alice, agent, policies, monkeypatch
):
    from review import consumers, queue

    monkeypatch.setattr(queue, "PAGE_SIZE", 2)
    monkeypatch.setattr(consumers, "PAGE_SIZE", 2)
    soon = escalate(agent, subject="Soon", due_in=timedelta(minutes=10))
    later = escalate(agent, subject="Later", due_in=timedelta(minutes=20))

    async def scenario():
        ws, snapshot = await _open(alice)
        assert _row_ids(snapshot) == [str(soon.pk), str(later.pk)]
        assert "Next 2" not in snapshot
        # Due after the page's last row: the next page's, never pushed to this one; but
        # now there is a next page to go to.
        await db(escalate)(agent, subject="Much later", due_in=timedelta(hours=5))
        pager = await _until(ws, lambda m: "queue-pager" in m)
        assert "Much later" not in pager and f"after={later.pk}" in pager and "Next 2" in pager
        sooner = await db(escalate)(agent, subject="Sooner", due_in=timedelta(minutes=5))
        pushed = await _until(ws, lambda m: "Sooner" in m)
        assert "Much later" not in pushed
        assert f'hx-swap-oob="beforebegin:#esc-{soon.pk}"' in pushed
        assert f'<div id="esc-{later.pk}" hx-swap-oob="delete"></div>' in pushed
        # The pager follows: the next page now starts after the new last row.
        assert f"after={soon.pk}" in pushed
        _, fresh = await _open(alice)
        assert _row_ids(fresh) == [str(sooner.pk), str(soon.pk)]
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_change_is_loaded_once_for_every_page_of_the_process(
    alice, carol, admin_user, agent, policies, monkeypatch
):
    from review import consumers

    loads: list[str] = []
    real = consumers.load_row
    monkeypatch.setattr(consumers, "load_row", lambda pk: loads.append(pk) or real(pk))

    async def scenario():
        pages = [await _open(user) for user in (alice, carol, admin_user)]
        esc = await db(escalate)(agent, subject="Seen by three")
        for ws, _ in pages:
            await _until(ws, lambda m: "Seen by three" in m)
        assert loads == [str(esc.pk)]
        for ws, _ in pages:
            await ws.disconnect()

    async_to_sync(scenario)()


def test_the_quiet_window_check_puts_a_reviewers_page_right(alice, agent, policies):
    """Once changes stop, a page re-reads its window; for a reviewer that reads their teams,
    which must happen on a database thread, not on the event loop (it raised
    SynchronousOnlyOperation there, and the page was never put right)."""
    import asyncio

    from review.consumers import ReviewQueueConsumer
    from review.queue import QueueFilters

    escalate(agent, subject="Missed")

    async def scenario() -> list[str]:
        consumer = ReviewQueueConsumer()
        consumer.scope = {"user": alice}
        consumer.filters = QueueFilters.from_params({})
        consumer.cursor, consumer.shown, consumer.keys, consumer.more = None, [], [], False
        consumer.teams = frozenset(
            await db(lambda: list(alice.teams.values_list("pk", flat=True)))()
        )
        consumer._lock = asyncio.Lock()
        sent: list[str] = []

        async def send(text_data: str) -> None:
            sent.append(text_data)

        consumer.send = send
        await consumer._check_window()
        return sent

    sent = async_to_sync(scenario)()
    assert sent and "Missed" in sent[0]
