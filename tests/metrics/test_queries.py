from datetime import timedelta

import pytest
from django.utils import timezone

from review.metrics import queries
from workflows.actions import record_outcome
from workflows.models import OutcomeQuality, OutcomeSource, RunStatus

pytestmark = pytest.mark.django_db


def scope(**kw) -> queries.Scope:
    now = timezone.now()
    return queries.Scope(since=now - timedelta(days=1), until=now + timedelta(seconds=1), **kw)


def test_completion_rate_counts_finished_runs_that_met_their_objective(make_run):
    for status in [RunStatus.SUCCEEDED] * 3 + [
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.WAITING,
    ]:
        make_run(status=status)
    figures = queries.run_figures(scope())
    assert figures["completion_rate"] == pytest.approx(3 / 5)
    assert figures["waiting"] == 1


def test_escalation_rate_and_autonomous_share(propose, policies):
    for _ in range(3):
        propose("update_crm", 0.9)  # acts alone
    propose("update_crm", 0.1)  # below 0.7: review
    propose("send_reply", 0.99)  # irreversible: review
    a = queries.action_figures(scope())
    assert a["total"] == 5
    assert a["autonomous_share"] == pytest.approx(3 / 5)
    assert a["escalation_rate"] == pytest.approx(2 / 5)


def test_approval_edit_reject_and_override_rates(propose, decide, policies):
    actions = [propose("send_reply", 0.9) for _ in range(5)]
    decide(actions[0], "approve")
    decide(actions[1], "approve")
    decide(
        actions[2], "approve", edited={"ticket_id": "T-1", "to": "a@example.com", "body": "better"}
    )
    decide(actions[3], "reject", reason="wrong tone")
    decide(actions[4], "respond", reason="Ask for the order number first")
    d = queries.decision_figures(scope())
    assert (d["approved"], d["edited"], d["rejected"], d["responded"]) == (2, 1, 1, 1)
    assert d["approval_rate"] == pytest.approx(0.4)
    assert d["override_rate"] == pytest.approx(0.6)
    # An answer is its own verdict: not a rejection.
    assert d["reject_rate"] == pytest.approx(0.2)
    assert d["respond_rate"] == pytest.approx(0.2)
    assert d["latency_p50_s"] is not None and d["latency_p50_s"] >= 0


def test_scopes_filter_by_action_type_and_team(propose, decide, policies, billing):
    propose("update_crm", 0.9)
    propose("send_reply", 0.9)
    assert queries.action_figures(scope(action_type="send_reply"))["total"] == 1
    assert queries.action_figures(scope(team_ids=(billing.pk,)))["total"] == 0


def test_calibration_bins_rates_and_wilson_intervals(propose, decide, policies):
    # Bin 0.9-1.0: 9 of 10 approved unchanged; bin 0.5-0.6: 1 of 4.
    for i in range(10):
        decide(propose("send_reply", 0.95), "approve" if i < 9 else "reject")
    for i in range(4):
        decide(propose("send_reply", 0.55), "approve" if i < 1 else "reject")
    bins = queries.calibration(scope())["send_reply"]
    top, mid = bins[9], bins[5]
    assert (top["approved"], top["n"]) == (9, 10)
    assert (mid["approved"], mid["n"]) == (1, 4)
    lo, hi = top["interval"]
    assert lo == pytest.approx(0.5958, abs=1e-3) and hi == pytest.approx(0.9821, abs=1e-3)
    assert bins[0]["n"] == 0 and bins[0]["interval"] is None


def test_failures_are_grouped_by_cause_and_link_to_their_trace(make_run, propose, decide, policies):
    make_run(
        status=RunStatus.FAILED,
        error="step draft_reply failed: ModelOutputError: "
        "triage.propose: no valid answer after 3 attempts; the step needs attention",
    )
    make_run(status=RunStatus.FAILED, error="step fetch timed out after 120 s")
    decide(propose("send_reply", 0.9), "reject", reason="Promised a refund")
    decide(propose("send_reply", 0.9), "reject", reason="Promised a refund")
    decide(
        propose("send_reply", 0.9), "approve", edited={"ticket_id": "T", "to": "x@y.z", "body": "b"}
    )
    groups = queries.failure_cases(scope())
    assert len(groups["rejected: Promised a refund"]) == 2
    assert len(groups["model error"]) == 1
    assert len(groups["timeout"]) == 1
    assert len(groups["edited by a reviewer"]) == 1
    assert next(iter(groups)) == "rejected: Promised a refund"  # biggest group first
    assert all(item["run_id"] for items in groups.values() for item in items)


def test_outcomes_attach_and_split_autonomous_from_reviewed(propose, decide, policies):
    auto = [propose("update_crm", 0.9) for _ in range(4)]
    reviewed = propose("send_reply", 0.9)
    decide(reviewed, "approve")
    for a in auto[:3]:
        record_outcome(
            action=a,
            metric="customer_replied",
            quality=OutcomeQuality.GOOD,
            source=OutcomeSource.FOLLOW_UP,
        )
    record_outcome(
        action=auto[3],
        metric="judged_by_reviewer",
        quality=OutcomeQuality.BAD,
        source=OutcomeSource.REVIEWER,
        note="wrong category",
    )
    record_outcome(
        action=reviewed,
        metric="customer_replied",
        quality=OutcomeQuality.GOOD,
        source=OutcomeSource.API,
    )
    q = queries.outcome_quality(scope())
    assert (q["autonomous"]["n"], q["autonomous"]["bad"]) == (4, 1)
    assert q["autonomous"]["bad_rate"] == pytest.approx(0.25)
    assert (q["reviewed"]["n"], q["reviewed"]["bad"]) == (1, 0)
    assert auto[3].run.trace.filter(message__contains="judged_by_reviewer: bad").exists()
    assert "bad outcome: judged_by_reviewer" in queries.failure_cases(scope())


def test_breakdown_by_action_type(propose, decide, policies):
    propose("update_crm", 0.9)
    decide(propose("send_reply", 0.9), "reject", reason="no")
    rows = {r["key"]: r for r in queries.breakdown(scope(), "action_type")}
    assert rows["update_crm"]["autonomous_share"] == 1.0
    assert rows["send_reply"]["override_rate"] == 1.0


def test_an_answer_is_counted_as_answered_not_rejected_in_the_breakdown(propose, decide, policies):
    decide(propose("send_reply", 0.9), "reject", reason="no")
    decide(propose("send_reply", 0.9), "respond", reason="Ask for the order number first")
    decide(propose("send_reply", 0.9), "approve")
    [row] = [r for r in queries.breakdown(scope(), "action_type") if r["key"] == "send_reply"]
    assert row["reject_rate"] == pytest.approx(1 / 3)
    assert row["respond_rate"] == pytest.approx(1 / 3)
    assert row["override_rate"] == pytest.approx(2 / 3)


def test_daily_trend_has_a_row_per_day_and_no_fake_zeros(make_run):
    make_run()
    trend = queries.daily_trend(scope())
    assert len(trend) == 2
    assert trend[-1]["runs"] == 1
    assert trend[0]["completion_rate"] is None  # no runs that day: a gap, not 0%
