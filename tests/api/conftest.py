"""Tokens for the agent API: the triage agent's own token, a reviewer token acting as alice
(through a review console's agent: an agent's own token never decides its own escalations),
and a token of another agent (an outsider to the triage agent's actions)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from api.actions import create_api_token
from escalations.models import AgentProfile


class Api:
    """Django's test client speaking JSON with a bearer token."""

    def __init__(self, client: Client, raw: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {raw}"} if raw else {}

    def get(self, path: str, **params: Any):
        return self.client.get("/api/v1" + path, params, headers=self.headers)

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None):
        data = raw if raw is not None else __import__("json").dumps(body)
        return self.client.post(
            "/api/v1" + path, data, content_type="application/json", headers=self.headers
        )


@pytest.fixture
def agent_token(agent):
    return create_api_token(agent=agent, name="tests")


@pytest.fixture
def api(client, agent_token) -> Api:
    return Api(client, agent_token[1])


@pytest.fixture
def console_agent(support) -> AgentProfile:
    """What a reviewer's own tooling authenticates as: not the agent under review."""
    return AgentProfile.objects.create(name="review-console", team=support)


@pytest.fixture
def reviewer_api(client, console_agent, alice) -> Api:
    _, raw = create_api_token(agent=console_agent, reviewer=True, user=alice)
    return Api(Client(), raw)


@pytest.fixture
def other_agent(billing) -> AgentProfile:
    return AgentProfile.objects.create(name="billing-bot", team=billing)


@pytest.fixture
def outsider_api(other_agent) -> Api:
    _, raw = create_api_token(agent=other_agent)
    return Api(Client(), raw)


def action_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent": "triage-agent",
        "action_type": "update_crm",
        "payload": {"ticket_id": "T-1", "priority": "high"},
        "confidence": 0.95,
        "idempotency_key": str(uuid.uuid4()),
    }
    body.update(overrides)
    return body


def reply_body(**overrides: Any) -> dict[str, Any]:
    """A customer reply: irreversible, so the demo policies always send it to review."""
    defaults: dict[str, Any] = {
        "action_type": "send_reply",
        "payload": {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded, sorry."},
        "confidence": 0.9,
    }
    return action_body(**{**defaults, **overrides})
