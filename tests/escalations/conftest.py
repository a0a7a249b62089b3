"""Helpers for the autonomy tests: an action proposed in a real run, held against policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from escalations.models import AgentProfile, AutonomyPolicy, Escalation
from escalations.policy import clear_cache
from workflows.actions import propose_action, start_run
from workflows.models import Action, PolicyOutcome

REFUND = {"ticket_id": "T-1", "amount": 120}
REPLY = {"ticket_id": "T-1", "to": "a@example.com", "body": "Hello"}


@pytest.fixture(autouse=True)
def _fresh_policy_cache():
    # Each test's data is rolled back; the per-process cache must not outlive it by luck.
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def propose(
    agent: AgentProfile, ticket, django_capture_on_commit_callbacks
) -> Callable[..., Action]:
    """propose(action_type, payload, confidence) -> Action, each in a fresh run."""

    def _propose(action_type: str, payload: dict[str, Any], confidence: float) -> Action:
        with django_capture_on_commit_callbacks(execute=False):
            run = start_run(workflow="support_triage", input=ticket)
            return propose_action(
                run=run,
                step_name="propose_actions",
                action_type=action_type,
                payload=payload,
                confidence=confidence,
                rationale="test",
            )

    return _propose


@pytest.fixture
def refund_policy(support) -> Callable[..., AutonomyPolicy]:
    def _make(**fields: Any) -> AutonomyPolicy:
        values: dict[str, Any] = {
            "name": "refunds",
            "action_type": "issue_refund",
            "outcome": PolicyOutcome.REVIEW,
            "team": support,
        }
        values.update(fields)
        return AutonomyPolicy.objects.create(**values)

    return _make


def escalation_of(action: Action) -> Escalation:
    return Escalation.objects.get(action=action)


@pytest.fixture
def act_alone(support):
    def _make(action_type: str, **fields) -> AutonomyPolicy:
        values = {
            "name": f"{action_type} alone",
            "action_type": action_type,
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.5,
            "irreversible_requires_review": False,
            "team": support,
            **fields,
        }
        return AutonomyPolicy.objects.create(**values)

    return _make
