import random

import pytest

from escalations.actions import decide_escalation
from escalations.models import AutonomyPolicy, Verdict, Via
from escalations.recommender import (
    Observation,
    beta_cdf,
    beta_ppf,
    calibration_table,
    clopper_pearson_upper,
    observations_for,
    recommend,
    recommend_for,
)
from workflows.models import PolicyOutcome

from .conftest import REFUND, escalation_of


@pytest.mark.parametrize("n", [1, 10, 59, 299, 1000])
def test_with_no_errors_the_bound_is_the_closed_form(n):
    # Beta(1, n) has CDF 1 - (1 - x)^n, so its 95% quantile is 1 - 0.05^(1/n).
    assert clopper_pearson_upper(0, n, 0.95) == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-9)


def test_the_beta_functions_match_known_values():
    assert beta_cdf(0.5, 2, 3) == pytest.approx(11 / 16, abs=1e-12)
    assert beta_cdf(0.3, 1, 1) == pytest.approx(0.3, abs=1e-12)
    assert beta_ppf(0.5, 5, 5) == pytest.approx(0.5, abs=1e-9)
    # Symmetry: I_x(a, b) = 1 - I_{1-x}(b, a).
    assert beta_cdf(0.2, 3.5, 7) == pytest.approx(1 - beta_cdf(0.8, 7, 3.5), abs=1e-12)
    # 5 errors in 100: the textbook one-sided 95% bound is 0.1023.
    assert clopper_pearson_upper(5, 100, 0.95) == pytest.approx(0.10225, abs=5e-5)
    assert clopper_pearson_upper(3, 3) == 1.0
    assert clopper_pearson_upper(0, 0) == 1.0


def _history() -> list[Observation]:
    """Below 0.80 people reject every other one; from 0.80 up they approve all 300."""
    # An odd modulus puts errors (even i) at every level from 0.49 to 0.79.
    low = [Observation(confidence=0.49 + (i % 31) / 100, error=i % 2 == 0) for i in range(200)]
    high = [Observation(confidence=0.80 + (i % 20) / 100, error=False) for i in range(300)]
    return low + high


def test_it_recommends_the_lowest_bar_whose_error_bound_is_within_target():
    rec = recommend("send_reply", _history(), target=0.01, level=0.95)
    # 300 clean decisions at >= 0.80: bound 1 - 0.05^(1/300) = 0.00994 <= 1%. Any lower bar
    # takes in rejected actions and its bound jumps far above 1%.
    assert rec.threshold == 0.80
    assert rec.upper_bound == pytest.approx(1 - 0.05 ** (1 / 300), abs=1e-9)
    assert rec.share_alone == pytest.approx(300 / 500)
    assert "act alone at confidence >= 0.80" in rec.statement
    assert "95% one-sided Clopper-Pearson" in rec.statement


def test_too_few_clean_decisions_give_no_recommendation_rather_than_a_guess():
    few = [Observation(confidence=0.95, error=False) for _ in range(200)]
    rec = recommend("send_reply", few, target=0.01)
    # 200 clean decisions bound the error at 1.49%: not enough for 1%.
    assert rec.threshold is None
    assert "no threshold keeps the error bound within 1.0%" in rec.statement
    assert recommend("send_reply", few[:10]).statement.startswith("not enough evidence")


def test_the_share_alone_counts_every_recorded_action_not_just_decided_ones():
    rec = recommend("send_reply", _history(), all_confidences=[0.9] * 50 + [0.1] * 50, target=0.01)
    assert rec.share_alone == pytest.approx(0.5)


def test_the_calibration_table_bins_confidence_against_approval():
    rng = random.Random(4)
    obs = [Observation(confidence=c, error=rng.random() > c) for c in [0.05, 0.55, 0.56, 0.99, 1.0]]
    table = calibration_table(obs)
    assert len(table) == 10
    assert table[0].decided == 1
    assert table[5].decided == 2
    assert table[9].decided == 2  # 1.0 lands in the top bin
    assert [b.label for b in table][:2] == ["0.0 to 0.1", "0.1 to 0.2"]


@pytest.mark.django_db
def test_it_reads_human_verdicts_and_counts_edits_as_errors(alice, refund_policy, propose):
    refund_policy()
    verdicts = [
        (0.9, Verdict.APPROVE, None),
        (0.8, Verdict.APPROVE, {"ticket_id": "T-1", "amount": 1}),
        (0.7, Verdict.REJECT, None),
        (0.6, Verdict.RESPOND, None),
    ]
    for i, (confidence, verdict, edited) in enumerate(verdicts):
        esc = escalation_of(propose("issue_refund", {**REFUND, "ticket_id": f"T-{i}"}, confidence))
        decide_escalation(
            escalation_id=esc.pk,
            user=alice,
            verdict=verdict,
            via=Via.WEB,
            reason="because",
            edited_payload=edited,
        )
    obs = sorted(observations_for("issue_refund"), key=lambda o: -o.confidence)
    assert [(o.confidence, o.error) for o in obs] == [
        (0.9, False),
        (0.8, True),
        (0.7, True),
        (0.6, True),
    ]
    rec = recommend_for("issue_refund")
    assert rec.decided == 4 and rec.threshold is None


@pytest.mark.django_db
def test_a_policy_admin_page_shows_the_recommender_and_calibration(admin_client, agent):
    policy = AutonomyPolicy.objects.create(
        name="replies", action_type="send_reply", outcome=PolicyOutcome.REVIEW
    )
    page = admin_client.get(f"/admin/escalations/autonomypolicy/{policy.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Threshold recommender: send_reply" in body
    assert "Calibration: confidence vs how often people approved it unchanged" in body
    assert "most restrictive outcome wins" in body
