"""Slack fixtures: a local Slack Web API (tests.fakes.slack_api) the real WebClient talks to,
Slack switched on for the test, signed interaction requests, and — for the tests that need
the whole path — a celery worker of its own on a queue of its own, with Slack configured."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from slack_sdk.signature import SignatureVerifier

from escalations.models import AgentProfile, Escalation, Team
from escalations.slack import delivery
from escalations.slack.models import IdentitySource, SlackIdentity, SlackMessage
from tests.conftest import _service_env, _stop
from tests.fakes.slack_api import FakeSlack
from tests.support import processes
from workflows.actions import propose_action
from workflows.models import RunStatus, WorkflowRun

TOKEN = "xoxb-test-token"
SECRET = "test-signing-secret-8f742231b10e8888"
BASE_URL = "http://caliber.test"
SLACK_QUEUE = f"caliber-test-slack-{os.getpid()}"
SUPPORT_CHANNEL = "#support-review"
BILLING_CHANNEL = "#billing-review"


@pytest.fixture(scope="session")
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def slack(settings: Any, fake_slack: FakeSlack, support: Team, billing: Team) -> FakeSlack:
    """Slack switched on, pointed at the local fake, each team with its channel."""
    settings.SLACK_BOT_TOKEN = TOKEN
    settings.SLACK_SIGNING_SECRET = SECRET
    settings.SLACK_API_URL = fake_slack.api_url
    settings.CALIBER_BASE_URL = BASE_URL
    settings.SLACK_CELERY_QUEUE = SLACK_QUEUE
    fake_slack.reset()
    for team, channel in ((support, SUPPORT_CHANNEL), (billing, BILLING_CHANNEL)):
        team.slack_channel = channel
        team.save(update_fields=["slack_channel"])
    return fake_slack


def link(slack_user_id: str, user: User) -> SlackIdentity:
    return SlackIdentity.objects.create(
        slack_user_id=slack_user_id, user=user, source=IdentitySource.ADMIN
    )


def make_escalation(
    agent: AgentProfile,
    *,
    action_type: str = "send_reply",
    payload: dict[str, Any] | None = None,
    confidence: float = 0.6,
    rationale: str = "The customer asks about a double charge.",
    title: str = "Charged twice",
) -> Escalation:
    """A waiting run with one escalated action, built through the real actions (no engine)."""
    run = WorkflowRun.objects.create(
        workflow="support_triage",
        workflow_version=1,
        agent=agent,
        input={"ticket_id": "T-1", "subject": title, "body": "…", "customer": "a@example.com"},
        status=RunStatus.WAITING,
    )
    action = propose_action(
        run=run,
        step_name="propose_actions",
        action_type=action_type,
        payload=payload
        or {"ticket_id": "T-1", "to": "ada@example.com", "body": "Sorry! Refund on its way."},
        confidence=confidence,
        rationale=rationale,
    )
    return Escalation.objects.select_related("team", "action").get(action=action)


def deliver_all() -> list[float | None]:
    """Run every pending delivery in this process, the way the worker would (retries are
    returned, not waited for)."""
    results = []
    for pk in SlackMessage.objects.order_by("pk").values_list("pk", flat=True):
        results.append(delivery.sync_message(message_id=pk))
    return results


# --- signed interaction requests ------------------------------------------------------------


def form_body(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def signature_headers(
    body: bytes, *, ts: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    assert sig is not None
    return {"HTTP_X_SLACK_REQUEST_TIMESTAMP": str(ts), "HTTP_X_SLACK_SIGNATURE": sig}


def post_signed(client: Client, payload: dict[str, Any], **sign: Any) -> Any:
    body = form_body(payload)
    headers: dict[str, Any] = signature_headers(body, **sign)
    return client.post(
        "/slack/interactions/",
        data=body,
        content_type="application/x-www-form-urlencoded",
        **headers,
    )


def click(
    esc: Escalation,
    action_id: str,
    *,
    slack_user: str = "U_ALICE",
    channel: str = "C_SUPPORT",
    trigger_id: str = "trig-1",
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": slack_user, "username": slack_user.lower()},
        "team": {"id": "T1"},
        "channel": {"id": channel},
        "trigger_id": trigger_id,
        "container": {"type": "message", "channel_id": channel},
        "actions": [
            {
                "action_id": action_id,
                "block_id": "caliber.decide",
                "value": str(esc.pk),
                "type": "button",
                "action_ts": str(time.time()),
            }
        ],
    }


def submission(esc: Escalation, reason: str, *, slack_user: str = "U_ALICE") -> dict[str, Any]:
    return {
        "type": "view_submission",
        "user": {"id": slack_user},
        "team": {"id": "T1"},
        "view": {
            "id": "V1",
            "callback_id": "caliber.reject",
            "private_metadata": json.dumps({"escalation": str(esc.pk), "channel": "C_SUPPORT"}),
            "state": {
                "values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
            },
        },
    }


# --- a worker that delivers to the fake -----------------------------------------------------


@pytest.fixture(scope="session")
def slack_worker(
    django_db_setup: None, django_db_blocker: Any, fake_slack: FakeSlack, worker_log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` consuming only the Slack queue, configured for the fake."""
    with django_db_blocker.unblock():
        env = _service_env()
    env.update(
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=fake_slack.api_url,
        CALIBER_BASE_URL=BASE_URL,
        SLACK_CELERY_QUEUE=SLACK_QUEUE,
    )
    proc = processes.start_worker(
        env=env,
        log_path=worker_log_dir / "slack-worker.log",
        queue=SLACK_QUEUE,
        name=f"slack-{os.getpid()}@%h",
    )
    yield proc
    _stop(proc)
