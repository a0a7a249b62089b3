"""Slack interactivity (issue 6): how long /slack/interactions/ takes to handle a signed
Approve, and how long from that click until the resumed run has executed the action.

Slack is a local Slack Web API on loopback (tests.fakes.slack_api) that the real WebClient
in the workers talks to; the clicks are signed exactly as Slack signs them and go through
Django's whole request stack in this process.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from bench.harness import BenchEnv, Result, percentile

N_HANDLED = 300
N_RESUMED = 60
TOKEN = "xoxb-bench"
SECRET = "bench-signing-secret"


@contextmanager
def _slack_on(api_url: str) -> Iterator[None]:
    """Slack on for this process (settings) and for workers started inside (environment)."""
    from django.conf import settings

    values = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": api_url,
        "CALIBER_BASE_URL": "http://caliber.bench",
    }
    saved_settings = {k: getattr(settings, k) for k in values}
    saved_env = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        setattr(settings, k, v)
        os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved_settings.items():
            setattr(settings, k, v)
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _signed_click(escalation_id: str) -> tuple[bytes, dict[str, str]]:
    from slack_sdk.signature import SignatureVerifier

    payload = {
        "type": "block_actions",
        "user": {"id": "U_ALICE"},
        "team": {"id": "T1"},
        "channel": {"id": "C_SUPPORT"},
        "trigger_id": "trig",
        "actions": [
            {
                "action_id": "caliber.approve",
                "value": escalation_id,
                "type": "button",
                "action_ts": str(time.time()),
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    sig = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    assert sig is not None
    return body, {"HTTP_X_SLACK_REQUEST_TIMESTAMP": ts, "HTTP_X_SLACK_SIGNATURE": sig}


def _escalations_without_engine(agent: Any, n: int) -> list[str]:
    """Escalated replies built through the real actions, no worker needed."""
    from escalations.models import Escalation
    from workflows.actions import propose_action
    from workflows.models import RunStatus, WorkflowRun

    ids = []
    for i in range(n):
        run = WorkflowRun.objects.create(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            input={"ticket_id": f"T-{i}", "subject": "Charged twice", "body": "…"},
            status=RunStatus.WAITING,
        )
        action = propose_action(
            run=run,
            step_name="propose_actions",
            action_type="send_reply",
            payload={"ticket_id": f"T-{i}", "to": "ada@example.com", "body": "Sorry!"},
            confidence=0.6,
            rationale="bench",
        )
        ids.append(str(Escalation.objects.get(action=action).pk))
    return ids


def run(env: BenchEnv) -> list[Result]:
    from django.test import Client

    from escalations.models import Decision, Escalation, EscalationStatus
    from escalations.slack.models import IdentitySource, SlackIdentity
    from tests.fakes.slack_api import FakeSlack
    from workflows.actions import start_run
    from workflows.demo_tickets import make_ticket
    from workflows.models import Action, ActionStatus, RunStatus, WorkflowRun

    fake = FakeSlack(token=TOKEN).start()
    client = Client(HTTP_HOST="localhost")
    results: list[Result] = []
    try:
        with _slack_on(fake.api_url):
            data = env.seed()
            SlackIdentity.objects.create(
                slack_user_id="U_ALICE", user=data["alice"], source=IdentitySource.ADMIN
            )

            # --- handling time: the request alone, Slack calls happen after the ack.
            ids = _escalations_without_engine(data["agent"], N_HANDLED)
            handled = []
            for esc_id in ids:
                body, headers = _signed_click(esc_id)
                started = time.perf_counter()
                response = client.post(
                    "/slack/interactions/",
                    data=body,
                    content_type="application/x-www-form-urlencoded",
                    **headers,  # type: ignore[arg-type]
                )
                handled.append(time.perf_counter() - started)
                assert response.status_code == 200, response.content
            assert Decision.objects.filter(via="slack").count() == N_HANDLED
            results += [
                Result(
                    "slack_interaction_p50",
                    percentile(handled, 50) * 1000,
                    "ms",
                    better="lower",
                    notes=f"{N_HANDLED} signed Approve clicks through Django's request stack",
                ),
                Result(
                    "slack_interaction_p99",
                    percentile(handled, 99) * 1000,
                    "ms",
                    target="< 100 ms (Slack's limit: 3 s)",
                    better="lower",
                ),
            ]

            # --- click to resumed run: real triage runs, real workers delivering to Slack.
            data = env.reset()
            SlackIdentity.objects.create(
                slack_user_id="U_ALICE", user=data["alice"], source=IdentitySource.ADMIN
            )
            with env.workers(n=1, concurrency=2):
                rng = random.Random(11)
                latencies = []
                number = 0
                while len(latencies) < N_RESUMED:
                    number += 1
                    run_ = start_run(workflow="support_triage", input=make_ticket(rng, number))
                    esc = None

                    def waiting(run_id: Any = run_.pk) -> bool:
                        nonlocal esc
                        esc = Escalation.objects.filter(
                            action__run_id=run_id, status=EscalationStatus.OPEN
                        ).first()
                        finished = WorkflowRun.objects.filter(
                            pk=run_id, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]
                        ).exists()
                        return esc is not None or finished

                    env.wait_until(waiting, timeout=60, interval=0.005)
                    if esc is None:
                        continue  # this ticket's actions all acted alone
                    # Let the message reach Slack first, as a real click would require.
                    env.wait_until(
                        lambda e=esc: bool(e.slack_messages.filter(status="posted").exists()),
                        timeout=30,
                        interval=0.005,
                    )
                    body, headers = _signed_click(str(esc.pk))
                    started = time.perf_counter()
                    response = client.post(
                        "/slack/interactions/",
                        data=body,
                        content_type="application/x-www-form-urlencoded",
                        **headers,  # type: ignore[arg-type]
                    )
                    assert response.status_code == 200
                    env.wait_until(
                        lambda a=esc.action_id: Action.objects.filter(
                            pk=a, status=ActionStatus.EXECUTED
                        ).exists(),
                        timeout=60,
                        interval=0.002,
                    )
                    latencies.append(time.perf_counter() - started)
            results += [
                Result(
                    "slack_click_to_resumed_p50",
                    percentile(latencies, 50) * 1000,
                    "ms",
                    better="lower",
                    notes=f"{N_RESUMED} clicks; until the resumed run executed the approved "
                    "action (1 worker, concurrency 2, also delivering the Slack updates)",
                ),
                Result(
                    "slack_click_to_resumed_p95",
                    percentile(latencies, 95) * 1000,
                    "ms",
                    better="lower",
                ),
            ]
    finally:
        fake.stop()
    return results
