import pytest

from escalations.models import AgentProfile, AutonomyPolicy
from escalations.policy import evaluate
from workflows.models import PolicyOutcome

pytestmark = pytest.mark.django_db


def _eval(agent: AgentProfile, action_type: str, confidence: float):
    return evaluate(
        agent=agent, workflow="support_triage", action_type=action_type, confidence=confidence
    )


def test_a_confident_reversible_action_acts_alone(agent, policies):
    decision = _eval(agent, "update_crm", 0.9)
    assert decision.outcome == PolicyOutcome.AUTO
    assert decision.policy_id == policies[0].pk
    assert decision.policy_version == 1


def test_low_confidence_goes_to_review_with_a_reason_a_person_can_read(agent, policies):
    decision = _eval(agent, "update_crm", 0.62)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.reasons == [
        "confidence 0.62 < 0.70 required for update_crm at trust 'standard' (policy 'crm' v1)"
    ]


def test_irreversible_actions_are_reviewed_however_confident(agent, policies):
    decision = _eval(agent, "send_reply", 0.99)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert any("irreversible" in r for r in decision.reasons)


def test_every_contributing_reason_is_kept(agent, policies):
    decision = _eval(agent, "send_reply", 0.5)
    assert len(decision.reasons) == 2


def test_block_beats_review_beats_auto(agent, policies):
    AutonomyPolicy.objects.create(
        name="freeze", action_type="update_crm", outcome=PolicyOutcome.REVIEW, priority=1
    )
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.REVIEW
    block = AutonomyPolicy.objects.create(name="stop", outcome=PolicyOutcome.BLOCK, priority=0)
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.BLOCK
    assert decision.policy_id == block.pk


def test_a_disabled_policy_counts_for_nothing(agent, policies):
    AutonomyPolicy.objects.create(name="stop", outcome=PolicyOutcome.BLOCK, enabled=False)
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.AUTO


def test_scope_by_workflow_and_agent(agent, policies, support):
    other = AgentProfile.objects.create(name="other", team=support)
    AutonomyPolicy.objects.create(name="other-agent", agent=other, outcome=PolicyOutcome.BLOCK)
    AutonomyPolicy.objects.create(name="other-wf", workflow="mentions", outcome=PolicyOutcome.BLOCK)
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.AUTO
    assert _eval(other, "update_crm", 0.99).outcome == PolicyOutcome.BLOCK


def test_an_action_no_policy_covers_is_reviewed_by_the_agents_team(agent, support):
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.policy_id is None
    assert decision.team_id == support.pk


def test_the_kill_switch_sends_everything_to_review(agent, policies):
    agent.autonomy_paused = True
    agent.save(update_fields=["autonomy_paused"])
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert "kill switch" in decision.reasons[0]


def test_routing_goes_to_the_policy_team_else_the_agents(agent, policies, support, billing):
    policies[0].team = billing
    policies[0].save(update_fields=["team"])
    assert _eval(agent, "update_crm", 0.1).team_id == billing.pk
    assert _eval(agent, "route_to_team", 0.1).team_id == support.pk
