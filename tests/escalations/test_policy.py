from decimal import Decimal

import pytest

from escalations.models import AgentProfile, AutonomyPolicy, TrustLevel
from escalations.policy import current_policy_set, evaluate
from workflows.models import PolicyOutcome

pytestmark = pytest.mark.django_db


def _eval(agent: AgentProfile, action_type: str, confidence: float, payload=None):
    return evaluate(
        agent=agent,
        workflow="support_triage",
        action_type=action_type,
        confidence=confidence,
        payload=payload,
    )


def _set_trust(agent: AgentProfile, level: str) -> None:
    agent.trust_level = level
    agent.save(update_fields=["trust_level"])


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
    assert decision.reasons == [
        "send_reply is irreversible and policy 'replies' v1 requires review of those"
    ]


def test_every_contributing_reason_is_kept(agent, policies):
    decision = _eval(agent, "send_reply", 0.5)
    assert len(decision.reasons) == 2


def test_block_beats_review_beats_auto_whatever_the_priority(agent, policies):
    AutonomyPolicy.objects.create(
        name="freeze", action_type="update_crm", outcome=PolicyOutcome.REVIEW, priority=1
    )
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.REVIEW
    block = AutonomyPolicy.objects.create(name="stop", outcome=PolicyOutcome.BLOCK, priority=0)
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.BLOCK
    assert decision.policy_id == block.pk
    assert decision.reasons == ["policy 'stop' v1 blocks update_crm"]


def test_among_policies_giving_the_winning_outcome_the_highest_priority_is_recorded(
    agent, policies, billing
):
    strict = AutonomyPolicy.objects.create(
        name="strict crm",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.95,
        priority=500,
        team=billing,
    )
    decision = _eval(agent, "update_crm", 0.5)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.policy_id == strict.pk
    assert decision.team_id == billing.pk
    # Both failing policies say why.
    assert len(decision.reasons) == 2
    assert decision.reasons[0].endswith("(policy 'strict crm' v1)")


def test_a_looser_policy_never_overrides_a_stricter_one(agent, policies):
    AutonomyPolicy.objects.create(
        name="loose",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.1,
        priority=1000,
    )
    assert _eval(agent, "update_crm", 0.5).outcome == PolicyOutcome.REVIEW


def test_a_disabled_policy_counts_for_nothing(agent, policies):
    AutonomyPolicy.objects.create(name="stop", outcome=PolicyOutcome.BLOCK, enabled=False)
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.AUTO


def test_scope_by_workflow_and_agent(agent, policies, support):
    other = AgentProfile.objects.create(name="other", team=support)
    AutonomyPolicy.objects.create(name="other-agent", agent=other, outcome=PolicyOutcome.BLOCK)
    AutonomyPolicy.objects.create(name="other-wf", workflow="mentions", outcome=PolicyOutcome.BLOCK)
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.AUTO
    assert _eval(other, "update_crm", 0.99).outcome == PolicyOutcome.BLOCK
    assert (
        evaluate(
            agent=agent, workflow="mentions", action_type="update_crm", confidence=0.99
        ).outcome
        == PolicyOutcome.BLOCK
    )


def test_an_action_no_policy_covers_is_reviewed_by_the_agents_team(agent, support):
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.policy_id is None
    assert decision.team_id == support.pk
    assert decision.reasons == ["no autonomy policy covers update_crm; review is the default"]


def test_the_kill_switch_sends_everything_to_review(agent, policies):
    agent.autonomy_paused = True
    agent.save(update_fields=["autonomy_paused"])
    decision = _eval(agent, "update_crm", 0.99)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.reasons == ["autonomy is paused for agent 'triage-agent' (kill switch)"]


def test_the_kill_switch_does_not_loosen_a_block(agent, policies):
    AutonomyPolicy.objects.create(name="stop", outcome=PolicyOutcome.BLOCK)
    agent.autonomy_paused = True
    agent.save(update_fields=["autonomy_paused"])
    assert _eval(agent, "update_crm", 0.99).outcome == PolicyOutcome.BLOCK


def test_routing_goes_to_the_policy_team_else_the_agents(agent, policies, support, billing):
    policies[0].team = billing
    policies[0].save(update_fields=["team"])
    assert _eval(agent, "update_crm", 0.1).team_id == billing.pk
    assert _eval(agent, "route_to_team", 0.1).team_id == support.pk


# --- the confidence bar by trust level ------------------------------------------------------


@pytest.mark.parametrize(
    ("trust", "confidence", "outcome", "bar"),
    [
        (TrustLevel.PROBATION, 0.90, PolicyOutcome.REVIEW, "0.95"),
        (TrustLevel.PROBATION, 0.96, PolicyOutcome.AUTO, "0.95"),
        (TrustLevel.STANDARD, 0.75, PolicyOutcome.REVIEW, "0.80"),
        (TrustLevel.STANDARD, 0.85, PolicyOutcome.AUTO, "0.80"),
        (TrustLevel.TRUSTED, 0.62, PolicyOutcome.REVIEW, "0.65"),
        (TrustLevel.TRUSTED, 0.70, PolicyOutcome.AUTO, "0.65"),
    ],
)
def test_the_confidence_bar_depends_on_the_agents_trust_level(
    agent, trust, confidence, outcome, bar
):
    AutonomyPolicy.objects.create(
        name="crm",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.8,
        min_confidence_probation=0.95,
        min_confidence_trusted=0.65,
    )
    _set_trust(agent, trust)
    decision = _eval(agent, "update_crm", confidence)
    assert decision.outcome == outcome
    assert f"{bar} required for update_crm at trust '{trust}'" in decision.reasons[0]


def test_a_trust_change_applies_to_the_very_next_evaluation_even_with_a_stale_agent(
    agent, policies
):
    stale = AgentProfile.objects.get(pk=agent.pk)
    policies[0].min_confidence_probation = 0.99
    policies[0].save()
    assert _eval(stale, "update_crm", 0.9).outcome == PolicyOutcome.AUTO
    AgentProfile.objects.filter(pk=agent.pk).update(trust_level=TrustLevel.PROBATION)
    assert _eval(stale, "update_crm", 0.9).outcome == PolicyOutcome.REVIEW


# --- amounts ------------------------------------------------------------------------------------


def test_an_amount_over_the_maximum_goes_to_review(agent):
    AutonomyPolicy.objects.create(
        name="small refunds",
        action_type="issue_refund",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.5,
        max_amount=Decimal("50"),
        irreversible_requires_review=False,
    )
    assert _eval(agent, "issue_refund", 0.9, {"ticket_id": "T", "amount": 49.99}).outcome == (
        PolicyOutcome.AUTO
    )
    decision = _eval(agent, "issue_refund", 0.9, {"ticket_id": "T", "amount": "120"})
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.reasons == [
        "amount 120 > 50.00, the most issue_refund may move alone (policy 'small refunds' v1)"
    ]


@pytest.mark.parametrize("amount", [None, "lots", True, float("nan"), {"v": 1}])
def test_a_missing_or_meaningless_amount_counts_as_over_the_maximum(agent, amount):
    AutonomyPolicy.objects.create(
        name="small refunds",
        action_type="issue_refund",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.5,
        max_amount=Decimal("50"),
        irreversible_requires_review=False,
    )
    payload = {"ticket_id": "T"} if amount is None else {"ticket_id": "T", "amount": amount}
    decision = _eval(agent, "issue_refund", 0.9, payload)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert "has no numeric 'amount'" in decision.reasons[0]


def test_the_amount_comes_from_the_declared_field_not_from_what_the_model_claims(agent):
    AutonomyPolicy.objects.create(
        name="small refunds",
        action_type="issue_refund",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.5,
        max_amount=Decimal("50"),
        irreversible_requires_review=False,
    )
    payload = {"ticket_id": "T", "amount": 500, "cost": 1, "risk": "none"}
    assert _eval(agent, "issue_refund", 0.99, payload).outcome == PolicyOutcome.REVIEW


# --- irreversible actions -----------------------------------------------------------------------


def test_a_trusted_agent_above_the_stricter_bar_may_act_alone_on_an_irreversible_action(agent):
    AutonomyPolicy.objects.create(
        name="replies",
        action_type="send_reply",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.8,
        irreversible_requires_review=True,
        irreversible_trusted_min_confidence=0.95,
    )
    body = {"ticket_id": "T", "to": "a@example.com", "body": "Hi"}
    # Standard trust: reviewed however confident.
    decision = _eval(agent, "send_reply", 0.99, body)
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.reasons == [
        "send_reply is irreversible and policy 'replies' v1 requires review of those unless "
        "a trusted agent is at least 0.95 confident"
    ]
    _set_trust(agent, TrustLevel.TRUSTED)
    assert _eval(agent, "send_reply", 0.9, body).outcome == PolicyOutcome.REVIEW
    decision = _eval(agent, "send_reply", 0.97, body)
    assert decision.outcome == PolicyOutcome.AUTO
    assert any("is trusted and confidence 0.97 >= 0.95" in r for r in decision.reasons)


def test_a_reversible_action_ignores_the_irreversible_rule(agent, policies):
    assert _eval(agent, "route_to_team", 0.9).outcome == PolicyOutcome.AUTO


# --- payload patterns ---------------------------------------------------------------------------


def test_a_review_keyword_anywhere_in_the_payload_sends_it_to_review(agent, policies):
    policies[0].review_patterns = "lawyer\nchargeback"
    policies[0].save()
    decision = _eval(
        agent, "update_crm", 0.99, {"ticket_id": "T", "notes": ["fine", "my LAWYER says"]}
    )
    assert decision.outcome == PolicyOutcome.REVIEW
    assert decision.reasons == [
        "payload field 'notes[1]' matches review pattern 'lawyer' (policy 'crm' v1)"
    ]
    assert _eval(agent, "update_crm", 0.99, {"ticket_id": "T"}).outcome == PolicyOutcome.AUTO


def test_a_block_pattern_blocks_even_on_a_review_policy(agent, support):
    AutonomyPolicy.objects.create(
        name="replies",
        action_type="send_reply",
        outcome=PolicyOutcome.REVIEW,
        block_patterns=r"pass(word)?\s*[:=]",
    )
    body = {"ticket_id": "T", "to": "a@example.com", "body": "your password: hunter2"}
    decision = _eval(agent, "send_reply", 0.99, body)
    assert decision.outcome == PolicyOutcome.BLOCK
    assert decision.reasons == [
        r"payload field 'body' matches block pattern 'pass(word)?\s*[:=]' (policy 'replies' v1)"
    ]


def test_a_bad_pattern_is_refused_when_the_policy_is_saved(agent):
    from django.core.exceptions import ValidationError

    from escalations.actions import save_policy

    policy = AutonomyPolicy(
        name="broken", outcome=PolicyOutcome.REVIEW, review_patterns="fine\n(unclosed"
    )
    with pytest.raises(ValidationError) as exc:
        save_policy(policy=policy)
    assert "line 2 is not a valid pattern" in str(exc.value)
    assert not AutonomyPolicy.objects.exists()


# --- rate caps ----------------------------------------------------------------------------------


def test_past_the_rate_cap_autonomous_actions_go_to_review(agent, propose):
    AutonomyPolicy.objects.create(
        name="crm",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.5,
        rate_limit_count=2,
        rate_limit_window_minutes=60,
    )
    outcomes = [propose("update_crm", {"ticket_id": f"T-{i}"}, 0.9).outcome for i in range(3)]
    assert outcomes == [PolicyOutcome.AUTO, PolicyOutcome.AUTO, PolicyOutcome.REVIEW]
    third = propose("update_crm", {"ticket_id": "T-9"}, 0.9)
    assert third.reasons == [
        "rate cap reached: agent 'triage-agent' already took 2 update_crm action(s) alone in "
        "the last 60 min (cap 2, policy 'crm' v1)"
    ]


def test_the_rate_cap_window_slides(agent, propose):
    from datetime import timedelta

    from django.utils import timezone

    from workflows.models import Action

    AutonomyPolicy.objects.create(
        name="crm",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.5,
        rate_limit_count=1,
        rate_limit_window_minutes=10,
    )
    first = propose("update_crm", {"ticket_id": "T-1"}, 0.9)
    Action.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    assert propose("update_crm", {"ticket_id": "T-2"}, 0.9).outcome == PolicyOutcome.AUTO


# --- the compiled cache -------------------------------------------------------------------------


def test_every_change_reaches_the_cache_however_it_is_written(agent, policies):
    assert _eval(agent, "update_crm", 0.75).outcome == PolicyOutcome.AUTO
    AutonomyPolicy.objects.filter(pk=policies[0].pk).update(min_confidence=0.9)
    assert _eval(agent, "update_crm", 0.75).outcome == PolicyOutcome.REVIEW
    AutonomyPolicy.objects.filter(pk=policies[0].pk).delete()
    decision = _eval(agent, "update_crm", 0.75)
    assert decision.reasons == ["no autonomy policy covers update_crm; review is the default"]


def test_an_unchanged_database_reuses_the_compiled_set(agent, policies, django_assert_num_queries):
    _eval(agent, "update_crm", 0.9)
    first = current_policy_set()
    # One query: the stamp. Nothing recompiled.
    with django_assert_num_queries(1):
        decision = _eval(agent, "update_crm", 0.9)
    assert decision.outcome == PolicyOutcome.AUTO
    assert current_policy_set() is first
