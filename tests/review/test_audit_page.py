"""An audit of an action that already ran reads as one: the page says it ran and asks whether
it was right; the verdict is recorded and changes nothing; nothing can answer the agent."""

from __future__ import annotations

import random

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from escalations import audit
from escalations.models import AutonomyPolicy, Decision, Escalation
from workflows.actions import execute_action, propose_action
from workflows.models import ActionStatus, PolicyOutcome, RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db


class Always(random.Random):
    def random(self) -> float:
        return 0.0


@pytest.fixture
def audit_of_what_ran(agent, policies, support) -> Escalation:
    AutonomyPolicy.objects.filter(action_type="update_crm").update(audit_rate=0.5, team=support)
    with transaction.atomic(), audit.use_rng(Always()):
        run = WorkflowRun.objects.create(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            input={"ticket_id": "T-1", "subject": "Wrong size", "body": "I got an XL."},
            status=RunStatus.RUNNING,
        )
        action = propose_action(
            run=run,
            step_name="propose_actions",
            action_type="update_crm",
            payload={"ticket_id": "T-1", "category": "shipping"},
            confidence=0.95,
            rationale="because",
        )
    assert action.outcome == PolicyOutcome.AUTO and action.audit_sampled
    execute_action(action=action)
    return Escalation.objects.get(action=action)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_says_it_already_ran_and_asks_whether_it_was_right(alice, audit_of_what_ran):
    html = _client(alice).get(reverse("review:detail", args=[audit_of_what_ran.pk])).text
    assert "Audit: this already ran" in html
    assert "What the agent did" in html and "What the agent proposes" not in html
    assert "Why you are asked" in html and "Why it was escalated" not in html
    assert "It was right" in html and "It was wrong" in html
    assert 'value="respond"' not in html and "Approve edited version" not in html
    queue = _client(alice).get(reverse("review:queue")).text
    assert "audit · already ran" in queue
    assert "audit sample (50.0%), after it ran" in queue


def test_a_review_page_is_unchanged(alice, agent, policies):
    from tests.review.factories import escalate

    esc = escalate(agent)
    html = _client(alice).get(reverse("review:detail", args=[esc.pk])).text
    assert "Audit: this already ran" not in html and "audit · " not in html
    assert "What the agent proposes" in html and 'value="respond"' in html


def test_judging_it_wrong_records_the_verdict_and_changes_nothing(alice, audit_of_what_ran):
    url = reverse("review:decide", args=[audit_of_what_ran.pk])
    r = _client(alice).post(url, {"verdict": "reject", "reason": "wrong category"})
    assert r.status_code in (200, 302)
    audit_of_what_ran.refresh_from_db()
    assert audit_of_what_ran.status == "rejected"
    assert audit_of_what_ran.action.status == ActionStatus.EXECUTED
    assert Decision.objects.filter(escalation=audit_of_what_ran).count() == 1


def test_answering_the_agent_about_what_already_ran_is_refused(alice, audit_of_what_ran):
    url = reverse("review:decide", args=[audit_of_what_ran.pk])
    r = _client(alice).post(url, {"verdict": "respond", "reason": "try again"})
    assert r.status_code == 400
    assert "It already ran" in r.text
    audit_of_what_ran.refresh_from_db()
    assert audit_of_what_ran.is_undecided
    assert not Decision.objects.filter(escalation=audit_of_what_ran).exists()
