"""Escalations built through the real actions, with the knobs the desk's tests need."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import transaction
from django.test import Client
from django.utils import timezone

from escalations.models import AgentProfile, Escalation, Team
from workflows.actions import propose_action
from workflows.models import RunStatus, WorkflowRun

# Confidences under the demo policies' bars, so each type goes to review.
PROPOSALS = {
    "send_reply": ({"ticket_id": "T-1", "to": "ada@example.com", "body": "Hello Ada"}, 0.9),
    "update_crm": ({"ticket_id": "T-1", "category": "billing", "urgency": "high"}, 0.4),
    "route_to_team": ({"ticket_id": "T-1", "team": "Billing"}, 0.2),
}


def escalate(
    agent: AgentProfile,
    *,
    subject: str = "Charged twice",
    action_type: str = "send_reply",
    due_in: timedelta | None = None,
    team: Team | None = None,
    body: str = "I was charged twice this month.",
    payload: dict[str, object] | None = None,
) -> Escalation:
    """One run with one escalated action, committed (with its SLA and team) in one go."""
    default, confidence = PROPOSALS[action_type]
    proposed: dict[str, object] = dict(default if payload is None else payload)
    with transaction.atomic():
        run = WorkflowRun.objects.create(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            input={"ticket_id": "T-1", "subject": subject, "body": body, "customer": "ada@x.io"},
            status=RunStatus.WAITING,
        )
        action = propose_action(
            run=run,
            step_name="propose_actions",
            action_type=action_type,
            payload=proposed,
            confidence=confidence,
            rationale="because",
        )
        esc = action.escalation
        updates: dict[str, object] = {
            "sla_due_at": timezone.now() + due_in if due_in is not None else None
        }
        if team is not None:
            updates["team"] = team
        Escalation.objects.filter(pk=esc.pk).update(**updates)
    esc.refresh_from_db()
    return esc


def logged_in(user) -> Client:
    """A test client with `user` signed in."""
    client = Client()
    client.force_login(user)
    return client


def queue_rows(html: str) -> list[str]:
    """The escalation ids of the queue's rows, in the order the page lists them."""
    return re.findall(r'<article id="esc-([0-9a-f-]+)"', html)
