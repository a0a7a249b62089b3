"""A small run of the calibration simulation through the real path: the invariants the full
run (`manage.py calibration_sim`, not a test) is judged by, on a configuration that takes
seconds: what runs alone is within its target, the joint bars reach at least 90% of an
oracle's autonomy at the same error, the drift is caught within 2,000 actions of its type,
and nothing that did not drift raises an alert."""

import pytest

from api.calibration_sim import (
    Config,
    SimAgent,
    Simulation,
    method_comparison,
    oracle_autonomy,
)
from escalations.models import Escalation, EscalationKind

pytestmark = pytest.mark.django_db


def test_the_oracle_lets_the_surest_run_alone_within_the_error():
    assert oracle_autonomy([0.0, 0.0, 0.1, 0.5], 0.05) == pytest.approx(0.75)
    assert oracle_autonomy([0.2, 0.2], 0.1) == 0.0


def test_a_drift_multiplies_the_chance_of_being_wrong():
    agent = SimAgent("a", "update_crm", "underconfident", drift_after=1)
    assert agent.p_wrong(0.9) == pytest.approx(0.01)
    assert agent.p_wrong(0.9, drifted=True) == pytest.approx(0.03)


def test_a_small_simulation_holds_every_invariant():
    agents = (
        SimAgent("sim-crm-calibrated", "update_crm", "calibrated"),
        SimAgent("sim-crm-drifting", "update_crm", "underconfident", drift_after=250),
    )
    config = Config(
        warmup=600,
        actions=800,
        audit_rate=0.05,
        agents=agents,
        review_every=40,
        check_every=40,
        score_sample=5000,
    )
    result = Simulation(config).run()
    (row,) = result["per_type"]
    assert row["action_type"] == "update_crm" and row["target"] == 0.05
    # Autonomy in force, within its target (the true error of what ran alone).
    assert row["autonomy"] > 0.3
    assert row["expected_error"] <= row["target"]
    assert row["decisions"] > 0 and row["audits"] > 0
    # Audits went through the real path: after reversible actions ran, judged, nothing held.
    audits = Escalation.objects.filter(kind=EscalationKind.AUDIT)
    assert audits.exists() and not audits.filter(status__in=["open", "claimed"]).exists()
    # The drift (x3) was caught within 2,000 update_crm actions; nothing else alerted.
    delay = result["detected"]["sim-crm-drifting"]
    assert delay is not None and delay <= 2000
    assert result["false_alerts"] == []
    effect = result["drifting"]["sim-crm-drifting"]
    assert effect["after"] > 2 * effect["before"]
    # Every method scored on the true curves; the joint bars are within the target and
    # reach at least 90% of the oracle's autonomy at the same error.
    methods = {m["method"]: m for m in method_comparison(result, config)}
    assert set(methods) == {"threshold", "isotonic", "joint"}
    joint = methods["joint"]
    assert joint["error"] <= joint["target"]
    assert joint["ratio"] >= 0.9
    assert joint["autonomy"] >= max(
        methods["threshold"]["autonomy"], methods["isotonic"]["autonomy"]
    )
