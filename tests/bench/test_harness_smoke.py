"""The benchmark harness and the peer harness still run (tiny N): a smoke test, not a
measurement. Nothing here asserts a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection

from bench.harness import Figure, count_costs, inline_engine, target_met
from escalations.models import AgentProfile, AutonomyPolicy, Escalation, EscalationStatus
from workflows.models import PolicyOutcome, RunStatus

ROOT = Path(__file__).resolve().parents[2]


def test_targets_are_read_from_their_text() -> None:
    assert target_met("p99 < 1 ms", 0.4) is True
    assert target_met("p95 < 100 ms under load", 120.0) is False
    assert target_met(">= 2x LangGraph", 2.0) is True
    assert target_met("", 5.0) is None


def test_a_figure_is_shown_against_its_limit() -> None:
    from bench.__main__ import render_table

    rate = Figure("e2e.auto_runs_per_s", "runs/s", [10.0, 12.0, 11.0], limit="celery_x_per_s")
    latency = Figure("e2e.p95", "ms", [20.0], target="< 10 ms", better="lower", limit="pg_per_s")
    limits = {
        "limits.celery_x_per_s": Figure("limits.celery_x_per_s", "tasks/s", [110.0]),
        "limits.pg_per_s": Figure("limits.pg_per_s", "rt/s", [1000.0]),
    }
    assert rate.ratio(110.0) == pytest.approx(0.1)
    assert latency.ratio(1000.0) == pytest.approx(20.0)  # 20 ms = 20 one-ms round trips
    table = render_table({**limits, rate.name: rate, latency.name: latency})
    assert "10.0% of celery_x" in table
    assert "20.0x one pg" in table
    assert "NOT MET" in table


def test_the_side_by_side_table_compares_with_the_best_durable_peer() -> None:
    from bench.peers.__main__ import side_by_side

    def fig(name: str, value: float) -> Figure:
        return Figure(f"side_by_side.{name}", "runs/s", [value])

    figures = {
        f.name: f
        for f in [
            fig("caliber.approval_per_s", 100.0),
            fig("langgraph_async.approval_per_s", 40.0),
            fig("langgraph_sync.approval_per_s", 60.0),
            fig("langgraph_exit.approval_per_s", 90.0),
        ]
    }
    text, verdicts = side_by_side(figures)
    # "exit" is not durable between steps: shown, never the yardstick.
    assert verdicts["approval_per_s"]["best_durable_langgraph"] == 60.0
    assert verdicts["approval_per_s"]["met"] is False
    assert "1.67x" in text


@pytest.mark.django_db(transaction=True)
def test_the_peer_workflow_pauses_for_approval_and_its_costs_are_counted(
    agent: AgentProfile, admin_user: User
) -> None:
    from bench.bench_e2e import approve_open
    from bench.peers.caliber_flow import ACTION_TYPE, APPROVAL
    from workflows.actions import start_run

    AutonomyPolicy.objects.create(
        name="peer", workflow=APPROVAL, action_type=ACTION_TYPE, outcome=PolicyOutcome.REVIEW
    )
    with inline_engine() as drain:
        # A first run warms what every later run reuses: the prompts seeded on first use, the
        # compiled policy set.
        start_run(workflow=APPROVAL, input={"item": "warm"})
        drain()
        assert approve_open(admin_user) == 1
        drain()
        with count_costs() as costs:
            run = start_run(workflow=APPROVAL, input={"item": "one"})
            with count_costs() as to_pause:
                drain()
            run.refresh_from_db()
            assert run.status == RunStatus.WAITING
            assert Escalation.objects.filter(status=EscalationStatus.OPEN).count() == 1
            assert approve_open(admin_user) == 1
            with count_costs() as to_done:
                drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    output = run.steps.get(name="execute").output
    assert output is not None
    assert output["result"] == {
        "done": "one",
        "key": f"{run.pk}:propose:{ACTION_TYPE}",
    }
    assert costs.queries > 0
    assert costs.commits > 0
    # The drain the start woke (one message for as many starts as are ready), the model
    # summary written after the escalation commits, the drain the decision woke.
    assert costs.tasks == 3
    # The engine's hot path, pinned (bench-peers measures it): a change here is a change in
    # what every run costs. Propose + escalate + wait, then resume + execute + finish; the
    # first round's transaction, then one commit per step (prepared statements: the round's
    # locks and reads, the relock-and-fence, the state write with its snapshot); before the
    # pause, the drain's batch claim (its own commit) and the summary writer's batch (the
    # claim of its lease, then the model call's row and the summary, fenced, in one). 30 / 7 before
    # issue 20's hot-path work and the batched summary writer; 26 / 6 before the proposal's
    # policy-freshness check rode on the action's INSERT and the escalation's team on its own;
    # 24 / 6 before the summary writer's lock, lease check and write became one statement;
    # 23 / 6 before its claim (pick, lock, lease, and the rows it reads) became one too;
    # 21 / 6 before the model call's row went into the summary's statement.
    assert (to_pause.queries, to_pause.commits) == (20, 6)
    # After the decision, the same drain's claim (the decision marked the run ready in its
    # own transaction: one statement there, and no resume task). 25 / 4 before.
    assert (to_done.queries, to_done.commits) == (18, 4)


@pytest.mark.django_db(transaction=True)
def test_the_langgraph_peer_pauses_and_resumes_on_postgres() -> None:
    pytest.importorskip("langgraph.checkpoint.postgres", reason="optional extra: .[peers]")
    from bench.peers import langgraph_flow

    s = connection.settings_dict
    conninfo = f"postgresql://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
    langgraph_flow.setup(conninfo)
    prefix = uuid.uuid4().hex
    approval = langgraph_flow.run_batch(
        conninfo, n=2, processes=1, approval=True, durability="sync", prefix=prefix
    )
    auto = langgraph_flow.run_batch(
        conninfo, n=2, processes=1, approval=False, durability="async", prefix=prefix + "a"
    )
    assert approval.completed == auto.completed == 2


def test_python_m_bench_measures_the_limits_and_writes_its_json(tmp_path: Path) -> None:
    name = f"caliber_bench_smoke_{os.getpid()}"
    env = dict(os.environ, BENCH_DB=name, BENCH_RESULTS_DIR=str(tmp_path))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench", "limits", "--quick", "--repeat", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = json.loads((tmp_path / "latest.json").read_text())
        assert out["quick"] is True
        assert out["figures"]["limits.celery_noop_round_trips_per_s"]["median"] > 0
        assert out["machine"]["workers"] == 1
        assert "vs machine limit" in done.stdout
    finally:
        base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_quick_peer_curve_completes_runs_through_the_drain(tmp_path: Path) -> None:
    """The bench's runs move only through the drain (no beat, no reconciler in a bench): a
    start wakes `drain_runs` on the bench's queue, a decision `drain_resumes` on its priority
    queue. A wake-up sent where the bench's workers do not listen, or one a stale flag
    silenced, leaves a batch waiting: this run then fails within BENCH_QUICK_TIMEOUT instead
    of hanging. Two Caliber points back to back (B=1, then B=100, fresh workers, the queues
    purged between), approval and auto each."""
    name = f"caliber_bench_curve_{os.getpid()}"
    env = dict(os.environ, BENCH_DB=name, BENCH_RESULTS_DIR=str(tmp_path), BENCH_QUICK_TIMEOUT="45")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("ENGINE_BATCH_MAX", None)
    argv = ["--curve", "--quick", "--curve-batches", "1,100", "--curve-workers", "1"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.peers", *argv, "--curve-no-peer"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = json.loads((tmp_path / "curve-latest.json").read_text())
        points = [(p["system"], p["path"], p["batch_max"], p["runs"]) for p in out["curve"]]
        assert points == [
            ("caliber", "approval", 1, 4),
            ("caliber", "auto", 1, 4),
            ("caliber", "approval", 100, 4),
            ("caliber", "auto", 100, 4),
        ]
        assert all(p["runs_per_s"] > 0 for p in out["curve"])
        assert "| 1 | 100 |" in done.stdout  # the table the README quotes
    finally:
        base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_bench_reset_clears_the_drain_wake_up_flags(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A flag left set while its message is purged would silence the next batch's starts
    (the bench has no beat to wake them): the reset clears both drains' flags with the
    queues."""
    from bench.harness import BenchEnv
    from workflows import outbox

    queue = f"caliber-bench-flags-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CELERY_QUEUE", queue)
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    client = outbox._broker_client()
    if client is None:
        pytest.skip("the broker is not Redis")
    keys = [outbox._drain_flag(task) for task in (outbox.DRAIN, outbox.DRAIN_RESUMES)]
    assert all(queue in key for key in keys)
    for key in keys:
        client.set(key, "1", ex=60)
    BenchEnv().purge_queue()
    assert [client.exists(key) for key in keys] == [0, 0]
