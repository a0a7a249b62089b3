"""`seed_demo` gives the demo 30 days of history: metrics, calibration and the recommender
have something to say on first start, the rollups count it exactly, and a second run adds
nothing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from escalations.demo_history import DAYS, DEGRADED_FROM, DEGRADED_TO, HISTORY_KEY
from escalations.models import Decision, Escalation
from escalations.recommender import recommend_for
from review.metrics import queries, rollups
from workflows.models import Action, Outcome, WorkflowRun
from workflows.prompts.models import ModelCall

pytestmark = pytest.mark.django_db


def _counts() -> tuple[int, ...]:
    return tuple(
        m.objects.count() for m in (WorkflowRun, Action, Escalation, Decision, Outcome, ModelCall)
    )


def _month(action_type: str = "") -> queries.Scope:
    today = timezone.now().astimezone(UTC).date()
    since = datetime.combine(today - timedelta(days=DAYS + 1), time(), tzinfo=UTC)
    return queries.Scope(since=since, until=timezone.now(), action_type=action_type)


@pytest.fixture
def seeded(db):
    call_command("seed_demo", quiet_logins=True)


def test_a_second_run_adds_nothing(seeded):
    first = _counts()
    runs, actions, escalations, decisions, outcomes, calls = first
    assert runs > 25 * DAYS and actions > runs and decisions == escalations > 500
    assert outcomes > 300 and calls == runs
    assert WorkflowRun.objects.exclude(idempotency_key__startswith=HISTORY_KEY).count() == 0
    call_command("seed_demo", quiet_logins=True)
    assert _counts() == first


def test_the_rollups_count_the_bulk_history_exactly(seeded):
    scope = _month()
    by_triggers = (
        queries.action_figures(scope),
        queries.decision_figures(scope),
        queries.calibration(scope),
        queries.daily_trend(scope),
        queries.run_figures(scope),
    )
    rollups.compact()
    assert rollups.rebuild() > 0
    assert (
        queries.action_figures(scope),
        queries.decision_figures(scope),
        queries.calibration(scope),
        queries.daily_trend(scope),
        queries.run_figures(scope),
    ) == by_triggers


def test_confidence_predicts_approval_and_the_recommender_has_an_answer(seeded):
    bins = [b for b in queries.calibration(_month())["send_reply"] if b["n"] >= 30]
    rates = [b["rate"] for b in bins]
    assert len(bins) >= 5
    assert rates[-1] > 0.95 and rates[0] < 0.4
    # Broadly rising: each bin at least about as likely to be approved as two bins lower.
    assert all(rates[i] >= rates[i - 2] - 0.05 for i in range(2, len(rates)))
    reply = recommend_for("send_reply")
    assert reply.threshold is not None and 0.9 <= reply.threshold <= 0.97
    assert reply.decided > 500


def test_every_action_type_the_demo_takes_gets_a_threshold_within_its_target(seeded):
    """Escalation decisions and the outcomes of what ran alone (update_crm and route_to_team
    act alone above their bars): each type has a bar, its bound within its own target."""
    for action_type, target in (
        ("send_reply", 0.01),
        ("update_crm", 0.05),
        ("route_to_team", 0.05),
    ):
        rec = recommend_for(action_type)
        assert rec.target == target
        assert rec.threshold is not None, (action_type, rec.note)
        assert rec.upper_bound is not None and rec.upper_bound <= target
        assert 0.2 < (rec.share_alone or 0) < 1
    crm = recommend_for("update_crm")
    assert crm.outcomes > 100 and 0 < crm.bad_outcomes < crm.outcomes


def test_the_degraded_days_stand_out(seeded):
    trend = {r["day"]: r for r in queries.daily_trend(_month(action_type="send_reply"))}
    today = timezone.now().astimezone(UTC).date()

    def approval(days: range) -> float:
        rows = [trend[today - timedelta(days=d)] for d in days]
        return sum(r["approval_rate"] * r["decisions"] for r in rows) / sum(
            r["decisions"] for r in rows
        )

    bad = approval(range(DEGRADED_TO, DEGRADED_FROM + 1))
    normal = approval(range(DEGRADED_FROM + 2, DAYS))
    assert bad < normal - 0.2
    failures = queries.failure_cases(_month())
    assert failures.get("model error")


def test_the_metrics_page_shows_the_history_at_once(seeded, admin_client):
    html = admin_client.get("/metrics/?period=30").text
    assert "No human decisions in this period yet." not in html
    assert "act alone at confidence &gt;= 0.9" in html or "act alone at confidence >= 0.9" in html


def test_rejected_replies_end_handed_off_as_the_live_engine_ends_them(seeded, admin_client):
    from escalations.models import Verdict
    from workflows.models import Effect, RunStatus

    rejected = Action.objects.filter(
        action_type="send_reply", escalation__decision__verdict=Verdict.REJECT
    ).select_related("run")
    assert rejected.count() > 10
    for action in rejected:
        # The person who rejected it owns the ticket: the run says so, the ledger records it.
        who = action.escalation.decision.decided_by.username
        assert action.run.status == RunStatus.HANDED_OFF
        assert action.run.error.startswith(f"send_reply handed to {who} ({who}: ")
        effect = Effect.objects.get(key__endswith=f":fallback-{action.pk}")
        assert effect.result["assigned_to"] == who
    # Nothing else is handed off: an approved reply's run succeeded.
    assert not WorkflowRun.objects.filter(
        status=RunStatus.HANDED_OFF,
        actions__escalation__decision__verdict=Verdict.APPROVE,
        actions__action_type="send_reply",
    ).exists()
    failures = queries.failure_cases(_month())
    assert failures.get("handed to a person")
    first = rejected[0].escalation
    page = admin_client.get(f"/review/{first.pk}/").text
    owner = first.decision.decided_by.username
    assert f"Hand the ticket to a person: {owner} owns it" in page


def test_answered_replies_come_back_revised_as_the_live_engine_revises_them(seeded, admin_client):
    """A Respond in the history is what the live engine makes of one: the agent revised the
    reply with the reviewer's words, the revision went to a person, and the run ends by
    what became of the revision (sent: succeeded; rejected: handed off), never a plain
    rejection whose run says it succeeded."""
    from escalations.models import EscalationStatus, Verdict
    from workflows.models import ActionStatus, Effect, RunStatus

    answered = Action.objects.filter(
        action_type="send_reply", escalation__decision__verdict=Verdict.RESPOND
    ).select_related("run", "escalation__decision__decided_by")
    assert answered.count() >= 5
    outcomes = set()
    for action in answered:
        decision = action.escalation.decision
        who = decision.decided_by.username
        assert action.status == ActionStatus.REJECTED and action.answered
        assert action.feedback["text"] == decision.reason and action.feedback["by"] == who
        revision = Action.objects.select_related("escalation__decision").get(revision_of=action)
        assert revision.revision_round == 1 and revision.run_id == action.run_id
        assert revision.payload["body"] != action.payload["body"]
        assert revision.created_at > decision.created_at
        revised = revision.escalation.decision
        assert revised.created_at > revision.created_at
        run = action.run
        if revised.verdict == Verdict.APPROVE:
            assert revision.status == ActionStatus.EXECUTED
            assert run.status == RunStatus.SUCCEEDED
        else:
            assert revised.verdict == Verdict.REJECT
            assert revision.escalation.status == EscalationStatus.REJECTED
            assert run.status == RunStatus.HANDED_OFF
            assert Effect.objects.filter(key__endswith=f":fallback-{revision.pk}").exists()
        outcomes.add(revised.verdict)
    assert outcomes == {Verdict.APPROVE, Verdict.REJECT}
    # No run whose customer got no reply says it succeeded.
    assert (
        not WorkflowRun.objects.filter(status=RunStatus.SUCCEEDED)
        .exclude(actions__action_type="send_reply", actions__status=ActionStatus.EXECUTED)
        .exists()
    )
    page = admin_client.get(f"/review/{answered[0].escalation.pk}/").text
    assert "The agent revised it" in page
    # The metrics count each answer as an answer, once, and its revision's verdict apart.
    figures = queries.decision_figures(_month())
    assert figures["responded"] == Decision.objects.filter(verdict=Verdict.RESPOND).count()
