"""Chaos: real workers SIGKILLed mid-step, duplicate deliveries, Redis restarted empty, a
PostgreSQL backend terminated mid-step, a step that always crashes its worker, a crash between
commit and enqueue. After each, the invariants hold and the runs finish (or dead-letter)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.db import connection

from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from tests.chaos.conftest import (
    Cluster,
    assert_invariants,
    free_port,
    measure,
    owner_pid,
    running_step,
    wait_until,
)
from tests.conftest import ROOT, wait_for_run
from workflows import engine
from workflows.actions import start_run
from workflows.models import (
    Action,
    DeadLetter,
    Effect,
    Outbox,
    RunStatus,
    StepRun,
    StepStatus,
    TraceKind,
)

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

HOLD = {"hold_seconds": 30, "hold_attempts": [1]}


def _assert_fan_out_done_once(run):
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert Effect.objects.filter(run=run).count() == 4
    assert StepRun.objects.get(run=run, name="join").output["joined"] == [
        "gather_a",
        "gather_b",
        "gather_c",
    ]
    assert run.trace.filter(message__startswith="joined 3 results").count() == 1


@pytest.mark.parametrize("step", ["gather_b", "join"])
def test_a_worker_child_sigkilled_mid_step_loses_nothing(
    cluster, sends_to, reconciler, agent, step
):
    sends_to(cluster)
    run = start_run(workflow="fan_out", input={**HOLD, "hold": [step]})
    victim = running_step(run, step)
    os.kill(owner_pid(victim), signal.SIGKILL)
    measure(f"worker-child-sigkilled-in-{step}", [run], fault_ended=time.monotonic(), timeout=40)
    wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
    _assert_fan_out_done_once(run)
    victim.refresh_from_db()
    assert victim.attempts == 2
    assert run.trace.filter(step_name=step, message__contains="lost its worker").exists()
    assert run.trace.filter(kind=TraceKind.RECOVERY, message__contains="after a crash").exists()
    assert_invariants()


def test_a_worker_main_process_sigkilled_mid_step_loses_nothing(
    cluster, sends_to, reconciler, agent, tmp_path, django_db_blocker
):
    # A cluster of its own: its only worker is the one killed.
    c = sends_to(
        Cluster(redis_url=cluster.redis_url, log_dir=tmp_path, django_db_blocker=django_db_blocker)
    )
    try:
        doomed = c.start_worker(concurrency=2)
        run = start_run(workflow="fan_out", input={**HOLD, "hold": ["gather_a"]})
        running_step(run, "gather_a")
        os.kill(doomed.pid, signal.SIGKILL)  # the main process; its children are orphaned
        doomed.wait(10)
        killed = time.monotonic()
        c.start_worker(concurrency=2)
        # The fault ends when its replacement is ready, as a supervisor would start one.
        replaced = time.monotonic()
        measure(
            "worker-main-sigkilled",
            [run],
            fault_ended=replaced,
            timeout=40,
            replacement_ready_after=f"{replaced - killed:.1f}s",
        )
        wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
        _assert_fan_out_done_once(run)
        assert StepRun.objects.get(run=run, name="gather_a").attempts == 2
        assert_invariants()
    finally:
        c.stop()


def test_the_same_step_delivered_twice_sequentially_and_concurrently_runs_once(
    cluster, sends_to, reconciler, agent
):
    sends_to(cluster)
    runs = [start_run(workflow="fan_out", input={}) for _ in range(4)]
    stop = threading.Event()

    def hammer():
        # Every delivery the engine can get, again and again, racing the worker's own.
        try:
            while not stop.is_set():
                for run in runs:
                    engine.advance_run(run_id=run.pk)
                    for name in ("start", "gather_a", "gather_b", "gather_c", "join", "finish"):
                        engine.run_step(run_id=run.pk, step_name=name)
        finally:
            connection.close()

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for run in runs:
            wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    measure("same-step-delivered-again-and-again", runs, fault_ended=time.monotonic())
    for run in runs:
        _assert_fan_out_done_once(run)
        # Nothing crashed, so every step ran exactly one attempt.
        assert set(StepRun.objects.filter(run=run).values_list("attempts", flat=True)) == {1}
    # And sequentially, after the fact: all no-ops.
    effects, trace = Effect.objects.count(), sum(r.trace.count() for r in runs)
    for run in runs:
        engine.advance_run(run_id=run.pk)
        engine.run_step(run_id=run.pk, step_name="gather_a")
    assert (Effect.objects.count(), sum(r.trace.count() for r in runs)) == (effects, trace)
    assert_invariants()


def test_a_decision_delivered_from_two_channels_resumes_the_run_once(
    cluster, sends_to, reconciler, policies, ticket, alice, carol
):
    from escalations.actions import AlreadyDecided

    sends_to(cluster)
    run = start_run(workflow="support_triage", input=ticket)
    wait_for_run(run, RunStatus.WAITING, timeout=30)
    reply = Action.objects.get(run=run, action_type="send_reply")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def decide(user, via):
        barrier.wait()
        try:
            decide_escalation(
                escalation_id=reply.escalation.pk, user=user, verdict=Verdict.APPROVE, via=via
            )
            outcomes.append("won")
        except AlreadyDecided:
            outcomes.append("lost")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(alice, Via.WEB)),
        threading.Thread(target=decide, args=(carol, Via.SLACK)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decided = time.monotonic()
    assert sorted(outcomes) == ["lost", "won"]
    measure("decision-from-two-channels", [run], fault_ended=decided, timeout=30)
    wait_for_run(run, RunStatus.SUCCEEDED, timeout=30)
    assert Effect.objects.filter(action=reply).count() == 1
    assert_invariants()


def test_redis_killed_and_restarted_empty_during_50_runs_loses_no_run(
    sends_to, agent, tmp_path, django_db_blocker
):
    """Everything queued in Redis is gone; the outbox's restarted-broker check sends it all
    again: the relay each worker asks for as it reconnects (config.celery), or beat's, every
    5 s as in production, whichever is first. The reconciler and the engine are given
    production's 60 s stall, so the recovery measured is the outbox's, not their sweep:
    under 20 s from the broker's return to the last run settled."""
    import redis as redis_py

    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()

    def redis_server():
        return subprocess.Popen(
            [
                "redis-server",
                "--daemonize",
                "no",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data),
                "--logfile",
                str(tmp_path / "redis.log"),
            ]
        )

    redis = redis_server()
    wait_until(lambda: _listening(port), 10, "redis to listen")
    broker_url = f"redis://127.0.0.1:{port}/0"
    c = sends_to(
        Cluster(redis_url=broker_url, log_dir=tmp_path, django_db_blocker=django_db_blocker)
    )
    c.env["RUN_STALL_SECONDS"] = "60"
    broker = redis_py.Redis.from_url(broker_url, socket_timeout=2)
    from tests.chaos.conftest import Reconciler

    try:
        c.start_worker(concurrency=3)
        reconciler = Reconciler(stall_seconds=60, broker=broker, relay_every=5)
        with c.supervised() as replaced, reconciler:
            runs = [
                start_run(
                    workflow="fan_out",
                    input={"hold_seconds": 0.1, "hold": ["gather_a", "gather_b"]},
                )
                for _ in range(50)
            ]
            wait_until(
                lambda: StepRun.objects.filter(status=StepStatus.SUCCEEDED).count() >= 100,
                60,
                "the batch to be under way",
            )
            redis.kill()  # SIGKILL: everything queued in it is gone
            redis.wait(10)
            time.sleep(1)
            redis = redis_server()  # same port, empty
            wait_until(lambda: _listening(port), 10, "redis to come back")
            back = time.monotonic()
            back_at = time.time()
            log_sizes = {log: log.stat().st_size for log in c.logs}
            report = measure(
                "redis-restarted-empty-50-runs",
                runs,
                fault_ended=back,
                timeout=90,
                resent_by_beat=lambda: reconciler.resent,
                resent_by_workers=lambda: sum(n for _, n in _worker_resends(log_sizes)),
                resent_after=lambda: _first_resend_after(reconciler, back, back_at, log_sizes),
                workers_replaced=lambda: len(replaced),
            )
        for run in runs:
            _assert_fan_out_done_once(run)
        assert reconciler.resent or _worker_resends(log_sizes), "nothing was sent again"
        # Wall clock, like the other recovery bounds: the worker reconnects within a second
        # (config.celery), its relay re-sends at once, and the backlog is a few seconds'
        # work; the margin is for a loaded machine.
        assert report.recovery_seconds < 20, report.line()
        assert_invariants()
    finally:
        c.stop()
        broker.close()
        redis.kill()
        redis.wait(10)


def _worker_resends(since: dict[Path, int]) -> list[tuple[float, int]]:
    """(wall time, sends) of each "broker restarted empty" re-send the workers logged after
    the offsets in `since` (their logs' sizes when the broker came back)."""
    found = []
    for log, offset in since.items():
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for m in re.finditer(
            r"^(\S+ \S+) .*broker restarted empty: re-sent (\d+) step\(s\) and (\d+) run",
            text,
            re.MULTILINE,
        ):
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((at, int(m.group(2)) + int(m.group(3))))
    return found


def _first_resend_after(reconciler: Any, back: float, back_at: float, since: Any) -> str:
    times = [at - back_at for at, _ in _worker_resends(since)]
    if reconciler.resent_at is not None:
        times.append(reconciler.resent_at - back)
    return f"{min(times):.1f}s" if times else "none"


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def test_a_postgresql_backend_terminated_mid_step_is_retried(cluster, sends_to, reconciler, agent):
    sends_to(cluster)
    run = start_run(workflow="db_victim", input={"hold_seconds": 4})
    running_step(run, "hold")

    def victim_backend():
        with connection.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND pid <> pg_backend_pid() "
                "AND query ILIKE %s",
                ["%workflows_traceevent%"],
            )
            row = cur.fetchone()
        return row[0] if row else None

    pid = wait_until(victim_backend, 10, "the step's open transaction")
    with connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [pid])
    measure("backend-terminated-mid-step", [run], fault_ended=time.monotonic(), timeout=40)
    wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
    hold = StepRun.objects.get(run=run, name="hold")
    assert hold.attempts == 2
    assert Effect.objects.filter(run=run).count() == 1
    errors = " ".join(run.trace.filter(kind=TraceKind.ERROR).values_list("message", flat=True))
    assert "attempt 1/3 failed" in errors
    assert_invariants()


def test_a_step_that_always_kills_its_worker_is_dead_lettered_after_its_attempts(
    cluster, sends_to, reconciler, agent, admin_user
):
    from django.test import Client

    sends_to(cluster)
    t0 = time.monotonic()
    run = start_run(workflow="kills_its_worker", input={})
    wait_for_run(run, RunStatus.FAILED, timeout=60)
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts) == (StepStatus.FAILED, 2)
    letter = DeadLetter.objects.get(run=run)
    assert letter.attempts == 2 and "lost its worker" in letter.error
    assert "lost its worker" in run.error
    # Visible where an operator looks: the run's page lists the dead letter.
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="dead-letters"' in page and "lost its worker" in page
    measure("poison-step", [run], fault_ended=t0, dead_lettered_after_attempts=letter.attempts)
    assert_invariants()


def test_a_crash_between_commit_and_enqueue_is_recovered_from_the_outbox(cluster, sends_to, agent):
    from tests.chaos.conftest import Reconciler

    sends_to(cluster)
    # The start's send is held back (no outbox row stands for it: the pending run does).
    with mock.patch("workflows.outbox.send"):
        run = start_run(workflow="fan_out", input={})
    assert not Outbox.objects.filter(args__0=str(run.pk)).exists()
    # Another process advances the run and dies right after its commit, before any send.
    script = (
        "import os, uuid, django\n"
        "django.setup()\n"
        "from workflows import outbox, engine\n"
        "outbox.send = lambda *a, **k: os._exit(70)\n"
        f"engine.advance_run(run_id=uuid.UUID('{run.pk}'))\n"
    )
    from tests.conftest import _service_env

    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_service_env(), timeout=60)
    assert done.returncode == 70
    # Committed: start ran and the fan-out is queued in the outbox, but nothing was sent.
    assert StepRun.objects.get(run=run, name="start").status == StepStatus.SUCCEEDED
    assert StepRun.objects.filter(run=run, status=StepStatus.QUEUED).count() == 3
    assert Outbox.objects.filter(args__0=str(run.pk), task="workflows.tasks.run_step").count() == 3
    crashed = time.monotonic()
    with Reconciler():  # beat's relay finds the rows
        measure("crash-between-commit-and-send", [run], fault_ended=crashed, timeout=40)
        wait_for_run(run, RunStatus.SUCCEEDED, timeout=40)
    _assert_fan_out_done_once(run)
    assert not Outbox.objects.filter(args__0=str(run.pk)).exists()
    assert_invariants()
