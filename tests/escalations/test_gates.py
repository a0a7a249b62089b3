"""The gate that applies: which clause decides, at which threshold, and which numbers do
nothing. Held to `evaluate` itself, so the explanation cannot drift from the decision."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from escalations.models import AgentProfile, AutonomyPolicy, TrustLevel
from escalations.policy import AgentState, compile_policy_set, evaluate
from escalations.policy.effective import TRUST_LEVELS, gate_for, gate_rows, idle_numbers
from workflows.models import PolicyOutcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(db):
    call_command("seed_demo", quiet_logins=True, no_history=True)
    return AgentProfile.objects.get(name="triage-agent")


def _state(agent: AgentProfile, level: str) -> AgentState:
    return AgentState(
        id=agent.pk, name=agent.name, trust_level=level, paused=False, team_id=agent.team_id
    )


def test_a_reply_is_decided_by_the_irreversible_clause_not_the_085_bar(demo):
    policy_set = compile_policy_set()
    gates = {
        level: gate_for(
            policy_set,
            workflow="support_triage",
            agent=_state(demo, level),
            action_type="send_reply",
            level=level,
        )
        for level in TRUST_LEVELS
    }
    standard = gates[TrustLevel.STANDARD]
    assert standard.outcome == PolicyOutcome.REVIEW
    assert standard.summary == "always reviewed"
    assert standard.deciding is not None
    assert "Customer replies are reviewed" in standard.deciding.label
    assert "irreversible → only a trusted agent at ≥ 0.97 acts alone" in standard.deciding.text
    assert [c.text for c in standard.inert] == ["act alone at 0.85"]

    trusted = gates[TrustLevel.TRUSTED]
    assert (trusted.outcome, trusted.threshold) == (PolicyOutcome.AUTO, 0.97)
    assert trusted.summary == "acts alone at confidence ≥ 0.97"
    assert trusted.deciding is not None and trusted.deciding.text == "irreversible → trusted ≥ 0.97"
    assert [c.threshold for c in trusted.inert] == [0.85]
    assert any("password" in c for c in trusted.conditions)


def test_the_per_trust_level_bar_is_the_one_that_decides_a_crm_update(demo):
    rows = {r.action_type: r for r in gate_rows(compile_policy_set(), agent_ids=[demo.pk])}
    probation, standard, trusted = rows["update_crm"].gates
    assert [g.threshold for g in (probation, standard, trusted)] == [0.9, 0.7, 0.6]
    assert probation.deciding is not None and probation.deciding.field == "min_confidence_probation"
    assert standard.current and not trusted.current
    assert rows["update_crm"].current is standard


def test_an_action_no_policy_covers_is_reviewed_by_default(demo):
    AutonomyPolicy.objects.filter(action_type="route_to_team").update(enabled=False)
    rows = {r.action_type: r for r in gate_rows(compile_policy_set(), agent_ids=[demo.pk])}
    gate = rows["route_to_team"].current
    assert gate.deciding is None and gate.summary == "reviewed: no policy covers route_to_team"


def test_the_numbers_that_decide_nothing_are_named(demo):
    policy_set = compile_policy_set()
    replies = AutonomyPolicy.objects.get(name="Customer replies are reviewed")
    rows = gate_rows(policy_set, workflow="", action_types=["send_reply"])
    idle = idle_numbers(policy_set.by_id[replies.pk], rows)
    assert len(idle) == 1 and idle[0].startswith("min_confidence = 0.85 decides nothing today")
    crm = AutonomyPolicy.objects.get(name="CRM updates act alone when confident")
    assert idle_numbers(policy_set.by_id[crm.pk], gate_rows(policy_set)) == []


@pytest.mark.parametrize("action_type", ["send_reply", "update_crm", "route_to_team"])
@pytest.mark.parametrize("level", TRUST_LEVELS)
def test_the_gate_agrees_with_evaluate_on_either_side_of_its_threshold(demo, action_type, level):
    AgentProfile.objects.filter(pk=demo.pk).update(trust_level=level)
    demo.refresh_from_db()
    policy_set = compile_policy_set()
    gate = gate_for(
        policy_set,
        workflow="support_triage",
        agent=_state(demo, level),
        action_type=action_type,
        level=level,
    )
    payload = {"ticket_id": "T-1", "to": "a@example.com", "body": "Hello", "team": "Billing"}

    def outcome(confidence: float) -> PolicyOutcome:
        return evaluate(
            agent=demo,
            workflow="support_triage",
            action_type=action_type,
            confidence=confidence,
            payload=payload,
            policy_set=policy_set,
            count_recent=lambda *a: 0,
        ).outcome

    if gate.outcome == PolicyOutcome.AUTO:
        assert gate.threshold is not None
        assert outcome(gate.threshold) == PolicyOutcome.AUTO
        assert outcome(gate.threshold - 0.005) == PolicyOutcome.REVIEW
    else:
        assert outcome(0.999) == gate.outcome


def test_the_policy_admin_shows_the_gate_and_warns_about_the_idle_number(admin_client, demo):
    replies = AutonomyPolicy.objects.get(name="Customer replies are reviewed")
    html = admin_client.get(f"/admin/escalations/autonomypolicy/{replies.pk}/change/").text
    assert "The gate that applies today" in html
    assert "min_confidence = 0.85 decides nothing today" in html
    assert "irreversible → only a trusted agent at ≥ 0.97 acts alone" in html
    assert "acts alone at confidence ≥ 0.97" in html


def test_the_metrics_show_the_gate_instead_of_the_idle_threshold(admin_client, demo):
    html = admin_client.get("/metrics/").text
    assert 'id="gates"' in html
    assert "The gate that applies" in html
    assert "irreversible → only a trusted agent at ≥ 0.97 acts alone" in html
