"""The live queue's websocket, through the real ASGI stack and the Redis channel layer."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from config.asgi import application
from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from workflows.actions import propose_action
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


def _cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (
        b"cookie",
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode(),
    )


def _communicator(*headers) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        application, "/ws/review/", headers=[(b"host", b"localhost"), *headers]
    )


def _escalate(agent, ticket, subject="Charged twice"):
    run = WorkflowRun.objects.create(
        workflow="support_triage",
        workflow_version=1,
        agent=agent,
        input={**ticket, "subject": subject},
        status=RunStatus.WAITING,
    )
    return propose_action(
        run=run,
        step_name="propose_actions",
        action_type="send_reply",
        payload={"ticket_id": "T", "to": "a@example.com", "body": "hi"},
        confidence=0.9,
        rationale="",
    ).escalation


def test_anonymous_connections_are_refused():
    async def scenario():
        connected, code = await _communicator(ORIGIN).connect()
        assert not connected
        assert code == 4401

    async_to_sync(scenario)()


def test_connections_from_a_foreign_origin_are_refused(alice):
    cookie = _cookie(alice)

    async def scenario():
        connected, _ = await _communicator((b"origin", b"http://evil.example"), cookie).connect()
        assert not connected

    async_to_sync(scenario)()


def test_a_reviewer_gets_a_snapshot_then_live_changes_of_their_team(alice, agent, policies, ticket):
    existing = _escalate(agent, ticket, subject="Already waiting")
    cookie = _cookie(alice)

    async def scenario():
        ws = _communicator(ORIGIN, cookie)
        connected, _ = await ws.connect()
        assert connected
        snapshot = await ws.receive_from(timeout=5)
        assert 'id="queue-rows"' in snapshot
        assert f"esc-{existing.pk}" in snapshot

        new = await database_sync_to_async(_escalate)(agent, ticket, "Fresh one")
        pushed = await ws.receive_from(timeout=5)
        assert f'id="esc-{new.pk}"' in pushed and "afterbegin:#queue-rows" in pushed
        assert "Fresh one" in pushed

        await database_sync_to_async(decide_escalation)(
            escalation_id=new.pk, user=alice, verdict=Verdict.APPROVE, via=Via.SLACK
        )
        gone = await ws.receive_from(timeout=5)
        assert f'<div id="esc-{new.pk}" hx-swap-oob="delete"></div>' in gone
        assert "afterbegin" not in gone
        await ws.disconnect()

    async_to_sync(scenario)()


def test_a_reviewer_never_receives_another_teams_events(bob, agent, policies, ticket):
    cookie = _cookie(bob)

    async def scenario():
        ws = _communicator(ORIGIN, cookie)
        connected, _ = await ws.connect()
        assert connected
        snapshot = await ws.receive_from(timeout=5)
        await database_sync_to_async(_escalate)(agent, ticket, "Support only")
        assert "Support only" not in snapshot
        assert await ws.receive_nothing(timeout=1)
        await ws.disconnect()

    async_to_sync(scenario)()
