"""The recommender on all the evidence: audits weighted by how they were sampled, outcomes
judged bad, per agent pooled towards the type, an explicit window, a target per type."""

import itertools
import random
from datetime import timedelta

import pytest
from django.utils import timezone

from escalations.models import AgentProfile, CalibrationTarget, Decision
from escalations.recommender import (
    Evidence,
    Observation,
    derived_target,
    isotonic_decreasing,
    recommend,
    recommend_for,
    target_for,
    weighted_upper,
)
from workflows.actions import record_outcome
from workflows.models import OutcomeQuality, OutcomeSource

from .conftest import escalation_of
from .test_audit import CRM, Always

pytestmark = pytest.mark.django_db


def test_unit_weights_give_the_exact_clopper_pearson_bound():
    from escalations.recommender import clopper_pearson_upper

    assert weighted_upper(5, 100, 100, 0.95) == pytest.approx(clopper_pearson_upper(5, 100))


def test_an_audit_stands_for_the_inverse_of_its_sampling_probability():
    # 10 audits at p = 0.1, one wrong: 100 actions' worth, but only 10 judgements' evidence.
    obs = [Observation(0.95, error=i == 0, weight=10.0, source="audit") for i in range(10)]
    rec = recommend("update_crm", obs, target=0.5, min_decisions=5)
    row = next(r for r in rec.rows if r.threshold == 0.9)
    assert row.weighted_error_rate == pytest.approx(0.1)
    # Kish: (sum w)^2 / sum w^2 = 10 effective judgements, not 100.
    assert row.upper_bound == pytest.approx(weighted_upper(1, 10, 10, 0.95))


def test_audited_and_escalated_verdicts_and_bad_outcomes_are_all_evidence(
    act_alone, propose, alice, support
):
    from escalations import audit
    from escalations.actions import decide_escalation
    from escalations.models import Verdict, Via
    from workflows.actions import execute_action

    act_alone("update_crm", audit_rate=0.25, min_confidence=0.8)
    low = propose("update_crm", CRM, 0.5)  # escalated
    decide_escalation(
        escalation_id=escalation_of(low).pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    with audit.use_rng(Always()):
        high = propose("update_crm", CRM, 0.9)  # audited after it runs
    execute_action(action=high)
    decide_escalation(
        escalation_id=escalation_of(high).pk,
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="wrong",
    )
    unaudited = propose("update_crm", CRM, 0.95)
    record_outcome(
        action=unaudited, metric="judged", quality=OutcomeQuality.BAD, source=OutcomeSource.API
    )
    rec = recommend_for("update_crm")
    by_source = {o.source: o for o in _observations("update_crm")}
    assert by_source["review"].weight == 1.0 and not by_source["review"].error
    assert by_source["audit"].weight == pytest.approx(4.0) and by_source["audit"].error
    assert by_source["outcome"].error and by_source["outcome"].confidence == 0.95
    assert rec.audits == 1 and rec.bad_outcomes == 1
    assert "evidence from the last 90 days: 1 decisions on escalations, 1 audits" in (
        rec.evidence_label
    )


def _observations(action_type):
    from escalations.recommender import evidence_for

    return evidence_for(action_type).observations


def test_the_window_leaves_old_verdicts_out_and_says_so(act_alone, propose, alice):
    from escalations.actions import decide_escalation
    from escalations.models import Verdict, Via

    act_alone("update_crm", min_confidence=0.99)
    for _ in range(2):
        esc = escalation_of(propose("update_crm", CRM, 0.5))
        decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    Decision.objects.filter(pk=Decision.objects.first().pk).update(
        created_at=timezone.now() - timedelta(days=100)
    )
    assert len(_observations("update_crm")) == 1
    rec = recommend_for("update_crm", window_days=90)
    assert rec.window_days == 90 and "last 90 days" in rec.evidence_label
    assert recommend_for("update_crm", window_days=None).decided == 2


def test_an_agent_with_little_evidence_borrows_from_its_type_scaled_down():
    own = [Observation(0.9, False, agent_id=1) for _ in range(100)]
    others = [Observation(0.9, i % 10 == 0, agent_id=2) for i in range(1000)]
    evidence = Evidence(own + others, [], truncated=False)
    pooled, share = evidence.for_agent(1)
    assert len(pooled) == 1100
    # 300 judgements are missing to reach 400: the other agent's 1,000 count 0.3 each.
    assert sum(o.weight for o in pooled if o.agent_id == 2) == pytest.approx(300)
    assert share == pytest.approx(300 / 400)
    rich, share = Evidence(others, [], False).for_agent(2)
    assert share == 0.0 and all(o.weight == 1.0 for o in rich)


def test_targets_follow_what_is_at_stake_and_an_admin_can_override_them():
    assert derived_target("route_to_team").target == 0.05  # reversible, internal
    assert derived_target("send_reply").target == 0.01  # irreversible, customer-facing
    assert derived_target("issue_refund").target == 0.005  # and it moves money
    assert "irreversible, customer-facing, moves money" in derived_target("issue_refund").source
    CalibrationTarget.objects.create(action_type="send_reply", target=0.02, level=0.9)
    goal = target_for("send_reply")
    assert (goal.target, goal.level, goal.source) == (0.02, 0.9, "set by an admin")


def test_the_isotonic_fit_never_rises_and_fills_unjudged_bins_from_below():
    fit = isotonic_decreasing([0.5, 0.2, 0.3, 0.0, 0.1], [1, 1, 1, 0, 1])
    assert fit == pytest.approx([0.5, 0.25, 0.25, 0.25, 0.1])
    assert all(a >= b for a, b in itertools.pairwise(fit))


def test_the_isotonic_bound_reaches_a_lower_bar_than_per_threshold_on_a_calibrated_agent():
    rng = random.Random(3)
    obs = []
    for _ in range(6000):
        c = rng.betavariate(10, 1.5)
        obs.append(Observation(round(c, 3), rng.random() > c))
    cp = recommend("update_crm", obs, target=0.05, method="threshold")
    iso = recommend("update_crm", obs, target=0.05, method="isotonic")
    assert cp.threshold is not None and iso.threshold is not None
    assert iso.threshold <= cp.threshold
    assert "isotonic" in iso.statement


def test_it_says_which_range_above_the_bar_nobody_judged():
    obs = [Observation(0.5 + i / 1000, i % 3 == 0) for i in range(300)]  # all below 0.8
    rec = recommend(
        "update_crm", obs, all_confidences=[0.85] * 10 + [0.97] * 5, in_force=0.8, target=0.05
    )
    assert [(u.label, u.actions) for u in rec.unjudged] == [("0.80 to 1.00", 15)]


def test_a_bar_in_force_looser_than_the_evidence_is_flagged():
    obs = [Observation(0.6, True) for _ in range(50)] + [Observation(0.95, False)] * 400
    rec = recommend("update_crm", obs, target=0.05, in_force=0.5)
    assert rec.looser_than_evidence
    assert "looser than the evidence allows" in rec.warning
    assert not recommend("update_crm", obs, target=0.05, in_force=0.96).looser_than_evidence


def test_an_agents_recommendation_names_it(act_alone, agent: AgentProfile):
    rec = recommend_for("update_crm", agent_id=agent.pk)
    assert rec.agent == agent.name and rec.subject == f"{agent.name} / update_crm"


def test_joint_bars_let_the_surest_of_every_agent_run_alone_first():
    """Two agents on one type, one right far more often at the same confidence: held to the
    target together, the better one's bar comes down further than each alone would allow,
    and the type's bound stays within the target."""
    import random

    from escalations.recommender import joint_bars

    rng = random.Random(3)
    obs, population = [], []
    for agent_id, p_wrong in ((1, lambda c: 1 - c), (2, lambda c: (1 - c) ** 2)):
        for _ in range(1500):
            c = round(rng.betavariate(8, 1.5), 4)
            obs.append(Observation(c, rng.random() < p_wrong(c), 1.0, agent_id))
            population.append((agent_id, c))
    evidence = Evidence(obs, population, False)
    joint = joint_bars("update_crm", evidence, target=0.05)
    assert joint.upper_bound is not None and joint.upper_bound <= 0.05
    bar_1, bar_2 = joint.bars[1], joint.bars[2]
    assert bar_1 is not None and bar_2 is not None and bar_2 < bar_1
    alone = []
    for agent_id in (1, 2):
        own, _ = evidence.for_agent(agent_id)
        rec = recommend(
            "update_crm",
            own,
            all_confidences=[c for a, c in population if a == agent_id],
            target=0.05,
            method="isotonic",
        )
        alone.append(rec.share_alone or 0.0)
    assert joint.share_alone > sum(alone) / 2
