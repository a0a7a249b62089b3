"""Constructed histories with known answers, built through the real actions."""

from __future__ import annotations

from typing import Any

import pytest

from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from tests.slack.conftest import fake_slack, slack  # noqa: F401  (Slack for the alert posts)
from workflows.actions import propose_action
from workflows.models import Action, RunStatus, WorkflowRun


@pytest.fixture
def make_run(agent):
    def make(status: str = RunStatus.SUCCEEDED, error: str = "", title: str = "T") -> WorkflowRun:
        return WorkflowRun.objects.create(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            input={"subject": title},
            status=status,
            error=error,
        )

    return make


@pytest.fixture
def propose(make_run):
    def go(
        action_type: str, confidence: float, run: WorkflowRun | None = None, **payload: Any
    ) -> Action:
        run = run or make_run(status=RunStatus.WAITING)
        body = {
            "ticket_id": "T-1",
            "to": "a@example.com",
            "body": "hi",
            "team": "Billing",
            **payload,
        }
        return propose_action(
            run=run,
            step_name="propose_actions",
            action_type=action_type,
            payload=body,
            confidence=confidence,
            rationale="",
        )

    return go


@pytest.fixture
def decide(admin_user):
    def go(action: Action, verdict: str, *, edited: dict | None = None, reason: str = "") -> None:
        decide_escalation(
            escalation_id=action.escalation.pk,
            user=admin_user,
            verdict=Verdict(verdict),
            via=Via.WEB,
            reason=reason or ("" if verdict == "approve" else "no"),
            edited_payload=edited,
        )

    return go
