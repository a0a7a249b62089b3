"""The daily action rollup: exact for every write path, and the dashboard reads it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from review.metrics import queries, rollups
from review.metrics.models import ActionDay, ActionDelta
from workflows.models import Action, PolicyOutcome

pytestmark = pytest.mark.django_db


def midnight(days_ago: int = 0) -> datetime:
    today = timezone.now().astimezone(UTC).date()
    return datetime.combine(today - timedelta(days=days_ago), time(), tzinfo=UTC)


def whole_days(**kw) -> queries.Scope:
    return queries.Scope(since=midnight(6), until=timezone.now(), **kw)


def live_counts(**filters) -> dict[tuple, int]:
    """What the rollup must equal: the same grouping straight off the action table."""
    out: dict[tuple, int] = {}
    for a in Action.objects.exclude(outcome="").filter(**filters).select_related("run"):
        key = (
            a.created_at.astimezone(UTC).date(),
            a.agent_id,
            a.run.workflow if a.run else "",
            a.action_type,
            a.outcome,
        )
        out[key] = out.get(key, 0) + 1
    return out


def rollup_counts() -> dict[tuple, int]:
    return rollups.counts(since=midnight(400).date(), until=midnight().date() + timedelta(days=1))


def test_engine_proposals_are_counted_once_with_their_policy_outcome(propose, policies):
    propose("update_crm", 0.9)  # inserted without an outcome, then evaluated: AUTO
    propose("update_crm", 0.1)  # REVIEW
    propose("send_reply", 0.99)  # REVIEW
    assert rollup_counts() == live_counts()
    assert sum(rollup_counts().values()) == 3
    # Only signed deltas so far; folding them changes where they live, not the totals.
    assert ActionDelta.objects.exists() and not ActionDay.objects.exists()
    rollups.compact()
    assert not ActionDelta.objects.exists()
    assert rollup_counts() == live_counts()


def test_updates_deletes_and_rollbacks_keep_the_rollup_exact(propose, policies, agent):
    a = propose("update_crm", 0.9)
    b = propose("update_crm", 0.2)
    rollups.compact()
    # An outcome changed after the fact, an action moved to another day, one deleted.
    Action.objects.filter(pk=a.pk).update(outcome=PolicyOutcome.BLOCK)
    Action.objects.filter(pk=b.pk).update(created_at=timezone.now() - timedelta(days=3))
    assert rollup_counts() == live_counts()
    Action.objects.filter(pk=a.pk).delete()
    assert rollup_counts() == live_counts()
    # A write that rolls back leaves no delta behind.
    with pytest.raises(RuntimeError), transaction.atomic():
        propose("update_crm", 0.9)
        raise RuntimeError("the step failed")
    assert rollup_counts() == live_counts()
    # An update that touches none of the counted columns writes nothing.
    before = ActionDelta.objects.count()
    Action.objects.filter(pk=b.pk).update(rationale="reworded")
    assert ActionDelta.objects.count() == before


def test_a_bulk_insert_in_sql_is_counted_and_rebuild_agrees(propose, policies):
    propose("update_crm", 0.9)
    propose("send_reply", 0.99)
    if connection.vendor != "postgresql":
        pytest.skip("the copy statement is PostgreSQL's")
    table = Action._meta.db_table
    cols = [str(f.column) for f in Action._meta.concrete_fields]
    copied = ", ".join(
        {"id": "gen_random_uuid()", "idempotency_key": "idempotency_key || '-copy'"}.get(c, c)
        for c in cols
    )
    with connection.cursor() as cursor:
        # The model's own table and column names; no input is interpolated.
        cursor.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {copied} FROM {table}")
    assert sum(rollup_counts().values()) == 4
    assert rollup_counts() == live_counts()
    rollups.compact()
    by_triggers = rollup_counts()
    assert rollups.rebuild() > 0
    assert rollup_counts() == by_triggers == live_counts()


def test_the_dashboard_figures_from_the_rollup_match_a_scan(propose, decide, policies, billing):
    for confidence in (0.9, 0.95, 0.1):
        propose("update_crm", confidence)
    decide(propose("send_reply", 0.99), "approve")
    decide(propose("send_reply", 0.42), "reject", reason="wrong customer")
    decide(propose("send_reply", 0.05), "respond", reason="ask for the order number")
    edited = {"ticket_id": "T-1", "to": "a@example.com", "body": "better"}
    decide(propose("send_reply", 0.71), "approve", edited=edited)
    decide(propose("update_crm", 0.1), "approve")
    old = propose("update_crm", 0.9)
    Action.objects.filter(pk=old.pk).update(created_at=midnight(2) + timedelta(hours=5))
    rollups.compact()
    propose("route_to_team", 0.9)  # still a pending delta: read from both tables

    rolled = whole_days()
    assert rolled.rolled(rollups.ACTIONS) is not None
    scanned = queries.Scope(since=rolled.since + timedelta(microseconds=1), until=rolled.until)
    assert scanned.rolled(rollups.ACTIONS) is None  # not whole days: the action table is scanned

    assert queries.action_figures(rolled) == queries.action_figures(scanned)
    assert queries.action_figures(rolled)["total"] == 10
    assert queries.breakdowns(rolled) == queries.breakdowns(scanned)
    decisions = queries.decision_figures(rolled)
    assert decisions == queries.decision_figures(scanned)
    assert (decisions["approved"], decisions["edited"], decisions["rejected"]) == (2, 1, 1)
    assert decisions["responded"] == 1
    calibration = queries.calibration(rolled)
    assert calibration == queries.calibration(scanned)
    assert [(b["approved"], b["n"]) for b in calibration["send_reply"] if b["n"]] == [
        (0, 1),  # 0.05: responded
        (0, 1),  # 0.42: rejected
        (0, 1),  # 0.71: edited
        (1, 1),  # 0.99: approved unchanged
    ]
    trend = queries.daily_trend(rolled)
    assert trend == queries.daily_trend(scanned)
    by_day = {r["day"]: (r["actions"], r["escalated"]) for r in trend}
    assert by_day[midnight(2).date()] == (1, 0)
    # Filters narrow the rollup the same way they narrow the scan.
    for kw in ({"action_type": "update_crm"}, {"team_ids": (billing.pk,)}, {"workflow": "x"}):
        r = queries.Scope(since=rolled.since, until=rolled.until, **kw)
        s = queries.Scope(since=scanned.since, until=scanned.until, **kw)
        assert queries.action_figures(r) == queries.action_figures(s), kw
        assert queries.decision_figures(r) == queries.decision_figures(s), kw
    rollups.compact()
    assert rollups.rebuild() > 0
    assert queries.calibration(whole_days()) == calibration
    assert queries.decision_figures(whole_days()) == decisions


def test_compaction_folds_exactly_what_it_deleted(propose, policies):
    for _ in range(3):
        propose("update_crm", 0.9)
    # One action row (day, agent, workflow, type, outcome) and one run row (three runs, one
    # day and status).
    assert rollups.compact() == 2
    assert not ActionDelta.objects.exists()
    propose("update_crm", 0.9)
    assert rollups.compact() == 2
    row = ActionDay.objects.get()
    assert row.n == 4 and row.outcome == PolicyOutcome.AUTO
    assert rollups.compact() == 0


def test_covers_only_whole_days():
    now = timezone.now()
    assert rollups.covers(midnight(3), now, now)
    assert rollups.covers(midnight(3), midnight(1), now)
    assert not rollups.covers(midnight(3) + timedelta(hours=1), now, now)
    assert not rollups.covers(midnight(3), now - timedelta(hours=2), now)


def test_runs_by_status_and_model_costs_follow_every_change(make_run, agent):
    from decimal import Decimal

    from workflows.models import RunStatus, WorkflowRun
    from workflows.prompts.models import ModelCall

    runs = [make_run(status=RunStatus.RUNNING) for _ in range(4)]
    for run, cost in zip(runs, ("0.010000", "0.020000", None, "0.005000"), strict=True):
        ModelCall.objects.create(
            run=run,
            prompt_name="triage",
            prompt_version=1,
            model="m",
            ok=True,
            input_tokens=100,
            output_tokens=20,
            cost_usd=Decimal(cost) if cost else None,
        )
    ModelCall.objects.create(prompt_name="summary", prompt_version=1, model="m", ok=True)
    rollups.compact()
    # Runs finish after their day was folded: the status moves, the count follows.
    WorkflowRun.objects.filter(pk__in=[r.pk for r in runs[:3]]).update(status=RunStatus.SUCCEEDED)
    runs[3].status = RunStatus.FAILED
    runs[3].save(update_fields=["status"])
    old = make_run(status=RunStatus.SUCCEEDED)
    WorkflowRun.objects.filter(pk=old.pk).update(created_at=midnight(3) + timedelta(hours=1))

    rolled = whole_days()
    scanned = queries.Scope(since=rolled.since + timedelta(microseconds=1), until=rolled.until)
    assert rolled.rolled(rollups.RUNS) is not None
    figures = queries.run_figures(rolled)
    assert figures == queries.run_figures(scanned)
    assert (figures["total"], figures["succeeded"], figures["failed"]) == (5, 4, 1)
    cost = queries.cost_figures(rolled, figures["succeeded"])
    assert cost == queries.cost_figures(scanned, figures["succeeded"])
    assert cost["model_calls"] == 4 and cost["tokens"] == 480
    assert cost["cost_usd"] == pytest.approx(0.035)
    assert queries.daily_trend(rolled) == queries.daily_trend(scanned)
    rollups.compact()
    assert queries.run_figures(rolled) == figures
    assert rollups.rebuild() > 0
    assert queries.run_figures(rolled) == figures
    assert queries.cost_figures(rolled, 4) == cost
