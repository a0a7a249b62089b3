"""Drift detection: the CUSUM on people's judgements fires on a shifted curve, stays quiet on
a steady one, alerts the owner team once, tightens where the policy says so, and a person's
acknowledgement lifts the hold."""

import itertools
import random

import pytest

from escalations.models import AutonomyPolicy, Decision, Escalation, Verdict, Via
from escalations.policy import clear_cache, evaluate
from review.metrics import drift
from review.metrics.alerts import alert_text
from review.metrics.drift import Judgement, check_drift, fit_reference, llr
from review.metrics.models import AlertIncident, AlertMetric, AlertRule, DriftMonitor
from workflows.models import Action, ActionStatus, PolicyOutcome

pytestmark = pytest.mark.django_db


def _stream(rng: random.Random, n: int, shift: float) -> list[Judgement]:
    out = []
    for i in range(n):
        c = rng.betavariate(10, 1.5)
        out.append(Judgement(i, c, rng.random() > max(c - shift, 0.0), audit=False))
    return out


def _cusum(reference: list[float], judgements: list[Judgement]) -> int | None:
    s = 0.0
    for i, j in enumerate(judgements, start=1):
        s = max(0.0, s + llr(reference[drift._bin(j.confidence)], j.error))
        if s > drift.THRESHOLD:
            return i
    return None


def test_a_steady_agent_rarely_raises_an_alarm_and_a_shifted_curve_does():
    """Per judgement (every action judged, as when most are escalated) a false alarm comes
    every ~2,800 (x3 / h=5; ~20,000 at x2.5 / h=7): the budget is per action, and an agent
    acting alone is judged on a few per cent of its actions."""
    alarms = 0
    for seed in range(10):
        rng = random.Random(seed)
        reference = fit_reference(_stream(rng, 2000, 0.0))
        steady = _stream(rng, 5000, 0.0)
        while (fired := _cusum(reference, steady)) is not None:
            alarms += 1
            steady = steady[fired:]
    assert alarms / 50_000 * 10_000 < 5
    rng = random.Random(5)
    reference = fit_reference(_stream(rng, 2000, 0.0))
    fired = _cusum(reference, _stream(rng, 3000, 0.07))
    assert fired is not None and fired < 2000


def _sim_agent(rng: random.Random, factor: float) -> tuple[float, bool]:
    """One action of the calibration simulation's drifting agent: underconfident,
    confidence ~ Beta(8, 1.5), P(wrong) = (1 - c)^2 times the drift factor."""
    c = round(rng.betavariate(8, 1.5), 4)
    return c, rng.random() < min((1 - c) ** 2 * factor, 1.0)


def _watch(seed: int, factor: float, actions: int, bar: float = 0.58) -> list[int]:
    """The actions (of this agent) at which the CUSUM fires, restarting after each alarm,
    when what is below `bar` (~3% here) is escalated and 2% of the rest is audited."""
    rng = random.Random(seed)
    reference = fit_reference(
        [Judgement(i, *_sim_agent(rng, 1.0), audit=False) for i in range(1500)]
    )
    s, alarms = 0.0, []
    for n in range(1, actions + 1):
        c, wrong = _sim_agent(rng, factor)
        if c < bar or rng.random() < 0.02:
            s = max(0.0, s + llr(reference[drift._bin(c)], wrong))
            if s > drift.THRESHOLD:
                alarms.append(n)
                s = 0.0
    return alarms


def test_a_tripled_error_is_caught_within_2000_actions_of_its_type_nine_times_in_ten():
    """Issue 18's target, on an agent that gives little evidence (few escalations): in the
    simulation its type has two agents, so 2,000 actions of the type are ~1,000 of its own.
    The 90th percentile here is 917 of its own at x3 / h=5; it was 1,136 at x2.5 / h=7."""
    delays = sorted((_watch(seed, 3.0, 3000) or [10**9])[0] for seed in range(80))
    assert delays[int(0.9 * len(delays))] <= 1000


def test_false_alarms_stay_under_one_per_10000_actions():
    alarms = sum(len(_watch(seed, 1.0, 20_000)) for seed in range(10))
    assert alarms / 200_000 * 10_000 < 1.0


def test_an_agent_judged_on_most_of_its_actions_needs_more_evidence_to_alert():
    """False alarms come per judgement, the budget per action: a high bar (most actions
    escalated) would otherwise alarm far more often per action than a low one."""
    assert drift.threshold_for(0.0) == drift.threshold_for(0.05) == drift.THRESHOLD
    assert drift.threshold_for(0.5) > drift.threshold_for(0.2) > drift.THRESHOLD
    # Fully judged: one false alarm per ~20,000 judgements as at x2.5 / h=7, not ~2,800.
    assert 7.0 <= drift.threshold_for(1.0) <= 7.5
    rng = random.Random(3)
    reference = fit_reference(_stream(rng, 2000, 0.0))
    steady = _stream(rng, 20_000, 0.0)
    s, alarms = 0.0, 0
    for j in steady:
        s = max(0.0, s + llr(reference[drift._bin(j.confidence)], j.error))
        if s > drift.threshold_for(1.0):
            alarms, s = alarms + 1, 0.0
    assert alarms <= 2


def test_the_reference_never_reads_a_probability_as_certain():
    reference = fit_reference([Judgement(i, 0.99, False, False) for i in range(500)])
    assert min(reference) >= drift.P_FLOOR and max(reference) <= drift.P_CEIL
    assert all(a >= b for a, b in itertools.pairwise(reference))


# --- through the database -------------------------------------------------------------------


@pytest.fixture
def crm_alone(agent, support):
    return AutonomyPolicy.objects.create(
        name="crm alone",
        action_type="update_crm",
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.9,
        team=support,
        tighten_on_drift=True,
    )


@pytest.fixture
def rule():
    return AlertRule.objects.get(metric=AlertMetric.CALIBRATION_DRIFT)  # the default one


def _judged(agent, alice, support, judgements: list[tuple[float, bool]], start: int) -> None:
    """Decided escalations of `agent`'s update_crm at these (confidence, wrong) pairs, and
    one action it took alone (the monitor watches what acts alone)."""
    for i, (c, wrong) in enumerate(judgements):
        action = Action.objects.create(
            agent=agent,
            action_type="update_crm",
            payload={"ticket_id": "T"},
            confidence=c,
            idempotency_key=f"d-{start + i}",
            outcome=PolicyOutcome.REVIEW,
            status=ActionStatus.REJECTED if wrong else ActionStatus.APPROVED,
        )
        esc = Escalation.objects.create(action=action, team=support, status="approved")
        Decision.objects.create(
            escalation=esc,
            verdict=Verdict.REJECT if wrong else Verdict.APPROVE,
            decided_by=alice,
            via=Via.WEB,
        )
    Action.objects.create(
        agent=agent,
        action_type="update_crm",
        payload={},
        confidence=0.95,
        idempotency_key=f"alone-{start}",
        outcome=PolicyOutcome.AUTO,
        status=ActionStatus.EXECUTED,
    )


def _pairs(rng: random.Random, n: int, shift: float) -> list[tuple[float, bool]]:
    return [(j.confidence, j.error) for j in _stream(rng, n, shift)]


def test_drift_alerts_the_owner_team_once_and_tightens_autonomy(
    agent, alice, support, crm_alone, rule, django_capture_on_commit_callbacks
):
    rng = random.Random(8)
    _judged(agent, alice, support, _pairs(rng, 400, 0.0), 0)
    assert check_drift(rule) == {"armed": 1, "opened": 0}
    _judged(agent, alice, support, _pairs(rng, 300, 0.0), 1000)
    assert check_drift(rule) == {"armed": 0, "opened": 0}  # steady: quiet
    _judged(agent, alice, support, _pairs(rng, 1500, 0.15), 2000)
    with django_capture_on_commit_callbacks() as sent:
        assert check_drift(rule)["opened"] == 1
        assert check_drift(rule)["opened"] == 0  # once, until a person looks
    assert len(sent) == 1
    incident = AlertIncident.objects.get(rule=rule)
    assert incident.subject == f"{agent.name}/update_crm"
    assert "wrong more often at the same confidence" in alert_text(incident)
    assert "Autonomy tightened" in incident.detail
    monitor = DriftMonitor.objects.get(agent=agent, action_type="update_crm")
    assert monitor.hold_policy is not None and monitor.hold_policy.outcome == PolicyOutcome.REVIEW
    clear_cache()
    decision = evaluate(agent=agent, workflow="", action_type="update_crm", confidence=0.99)
    assert decision.outcome == PolicyOutcome.REVIEW


def test_without_tighten_on_drift_it_only_alerts(agent, alice, support, crm_alone, rule):
    crm_alone.tighten_on_drift = False
    crm_alone.save()
    rng = random.Random(9)
    _judged(agent, alice, support, _pairs(rng, 400, 0.0), 0)
    check_drift(rule)
    _judged(agent, alice, support, _pairs(rng, 1500, 0.15), 2000)
    assert check_drift(rule)["opened"] == 1
    assert DriftMonitor.objects.get().hold_policy is None
    assert not AutonomyPolicy.objects.filter(name__startswith="Drift hold").exists()


def test_acknowledging_lifts_the_hold_and_rearms(agent, alice, support, crm_alone, rule):
    rng = random.Random(10)
    _judged(agent, alice, support, _pairs(rng, 400, 0.0), 0)
    check_drift(rule)
    _judged(agent, alice, support, _pairs(rng, 1500, 0.15), 2000)
    check_drift(rule)
    monitor = DriftMonitor.objects.get()
    hold = monitor.hold_policy
    drift.acknowledge_drift(monitor_id=monitor.pk, user=alice)
    hold.refresh_from_db()
    monitor.refresh_from_db()
    assert not hold.enabled
    assert monitor.alerted_at is None and monitor.cusum == 0 and monitor.reference
    assert AlertIncident.objects.get().closed_at is not None
    clear_cache()
    assert (
        evaluate(agent=agent, workflow="", action_type="update_crm", confidence=0.99).outcome
        == PolicyOutcome.AUTO
    )
