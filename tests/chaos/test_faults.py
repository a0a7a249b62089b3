"""Chaos at scale, each case measured (runs started / finished, duplicates, lost, seconds to
full recovery after the fault ends; see the summary at the end of the pytest output):

- worker pool children and main processes SIGKILLed again and again during 100 runs;
- PostgreSQL backends terminated again and again during 50 runs while the API and the pages
  are under load, and the database made unreachable outright (503 within the pool timeout,
  the pool back by itself);
- malformed model output and model faults through the loopback OpenAI-compatible server.

The four invariants are asserted after each (tests/chaos/conftest.py, assert_invariants).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from api.actions import create_api_token
from tests.chaos.conftest import (
    Cluster,
    Reconciler,
    assert_invariants,
    children_of,
    free_port,
    measure,
    settled_count,
)
from tests.conftest import _service_env, wait_for_run
from tests.fakes.openai_server import CANNED, FakeOpenAI, Scripted, schema_name
from tests.support import processes
from workflows.actions import start_run

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def _fan_out_batch(n: int, **input: Any) -> list[Any]:
    return [start_run(workflow="fan_out", input=dict(input)) for _ in range(n)]


@contextlib.contextmanager
def _own_cluster(cluster: Cluster, tmp_path: Any, django_db_blocker: Any, **env: str):
    c = Cluster(redis_url=cluster.redis_url, log_dir=tmp_path, django_db_blocker=django_db_blocker)
    c.env.update(env)
    try:
        yield c
    finally:
        c.stop()


def test_workers_sigkilled_again_and_again_during_100_runs_lose_nothing(
    cluster, sends_to, agent, tmp_path, django_db_blocker
):
    with _own_cluster(cluster, tmp_path, django_db_blocker) as c:
        sends_to(c)
        live: list[subprocess.Popen[bytes]] = [c.start_worker(concurrency=2) for _ in range(3)]
        kills = {"child": 0, "main": 0}
        stop = threading.Event()
        rng = random.Random(19)

        def killer() -> None:
            # A child every ~1.5 s, a whole worker's main process every fourth time (and a
            # replacement started, as a supervisor would).
            n = 0
            while not stop.wait(1.5):
                n += 1
                victim = rng.choice(live)
                if n % 4 == 0:
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait(10)
                    kills["main"] += 1
                    live.remove(victim)
                    live.append(c.start_worker(concurrency=2))
                    continue
                # A worker with children to kill: a replacement still booting has none yet
                # (on a loaded machine, kills were skipped that way until too few were left).
                parents = [w for w in live if children_of(w.pid)]
                children = children_of(rng.choice(parents).pid) if parents else []
                if children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(children), signal.SIGKILL)
                    kills["child"] += 1

        with Reconciler():
            runs = _fan_out_batch(100, hold_seconds=0.1, hold=["gather_b"])
            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
            # Kills go on until nearly the whole batch is through (15 s at least), so what is
            # measured after is the tail the kills left, not the batch's own length.
            # And until the kills this case promises have happened: starting a replacement
            # worker blocks the killer, for long on a loaded machine (4 child kills in 15 s).
            started = time.monotonic()

            def enough_kills() -> bool:
                return kills["child"] >= 5 and kills["main"] >= 1

            while (
                time.monotonic() - started < 15
                or (settled_count(runs) < 90 and time.monotonic() - started < 45)
                or (not enough_kills() and time.monotonic() - started < 120)
            ):
                time.sleep(0.5)
            stop.set()
            thread.join(60)
            fault_ended = time.monotonic()
            measure(
                "worker-sigkill-100-runs",
                runs,
                fault_ended=fault_ended,
                children_killed=kills["child"],
                mains_killed=kills["main"],
            )
        assert kills["child"] >= 5 and kills["main"] >= 1
        assert_invariants()


# --- the database ----------------------------------------------------------------------------

POOL_TIMEOUT = 2


@pytest.fixture(scope="module")
def pooled_server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Daphne as production runs it: PostgreSQL through the connection pool, a short pool
    timeout."""
    with django_db_blocker.unblock():
        env = {**_service_env(), "DB_POOL_MAX": "4", "DB_POOL_TIMEOUT": str(POOL_TIMEOUT)}
    port = free_port()
    log = tmp_path_factory.mktemp("pooled") / "daphne.log"
    proc = processes.start_daphne(env=env, log_path=log, port=port)
    yield f"http://127.0.0.1:{port}"
    processes.stop(proc)


@contextlib.contextmanager
def _admin() -> Iterator[psycopg.Connection[Any]]:
    """A connection to the server's maintenance database, never to the one under test, so
    cutting the test database off never cuts this off. Only ever touches our test database
    (the server is shared)."""
    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as conn:
        yield conn


def _terminate_backends(admin: psycopg.Connection[Any], *, spare: int | None) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s",
        [connection.settings_dict["NAME"], spare or 0],
    ).fetchall()
    return len(rows)


def _my_backend() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def _fetch(url: str, *, headers: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    request = Request(url, headers=headers)
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.headers["Content-Type"] or "", exc.read().decode()


def _session_headers(user: Any) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"}


def test_an_unreachable_database_is_503_within_the_pool_timeout_and_the_pool_recovers(
    pooled_server, agent, alice
):
    _, raw = create_api_token(agent=agent, name="chaos")
    api = {"Authorization": f"Bearer {raw}"}
    page = _session_headers(alice)
    targets = [
        (f"{pooled_server}/api/v1/runs/00000000-0000-0000-0000-000000000000", api),
        (f"{pooled_server}/review/", page),
        (f"{pooled_server}/metrics/", page),
        (f"{pooled_server}/runs/", page),
    ]

    def all_up() -> bool:
        return all(_fetch(url, headers=h)[0] in (200, 404) for url, h in targets)

    assert all_up()
    name = connection.settings_dict["NAME"]
    latencies: list[float] = []
    with _admin() as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            _terminate_backends(admin, spare=None)
            for _ in range(2):
                for url, headers in targets:
                    t0 = time.monotonic()
                    status, ctype, body = _fetch(url, headers=headers)
                    latencies.append(time.monotonic() - t0)
                    assert status == 503, (url, status, body[:300])
                    if "/api/" in url:
                        assert ctype == "application/json", body
                        assert "database is unavailable" in body
                    else:
                        assert ctype.startswith("text/html") and "briefly unavailable" in body
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    back = time.monotonic()
    while not all_up():
        assert time.monotonic() - back < 60, "the pool did not recover"
        time.sleep(0.2)
    recovered = time.monotonic() - back
    connection.close()  # this thread's connection was terminated with the rest
    report = measure(
        "database-unreachable",
        [],
        fault_ended=back,
        max_503_seconds=f"{max(latencies):.1f}",
        pool_timeout=POOL_TIMEOUT,
        pages_back_after=f"{recovered:.1f}s",
    )
    # Wall-clock bounds, generous for a loaded machine: the point is "seconds, not minutes".
    assert max(latencies) < POOL_TIMEOUT * 3 + 5, latencies
    assert recovered < 20, report.line()
    assert_invariants()


def test_backends_terminated_again_and_again_during_50_runs_and_api_load(
    cluster, sends_to, pooled_server, agent, alice
):
    sends_to(cluster)
    _, raw = create_api_token(agent=agent, name="chaos-load")
    api = {"Authorization": f"Bearer {raw}"}
    page = _session_headers(alice)
    spare = _my_backend()  # this thread's: it starts the runs and checks them afterwards
    stop = threading.Event()
    answers: list[tuple[str, int, str]] = []
    terminated = 0

    with Reconciler():
        runs = _fan_out_batch(50, hold_seconds=0.1, hold=["gather_a", "join"])
        ids = [str(r.pk) for r in runs]

        def load(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                if rng.random() < 0.6:
                    url, headers, kind = (
                        f"{pooled_server}/api/v1/runs/{rng.choice(ids)}",
                        api,
                        "api",
                    )
                else:
                    path = rng.choice(["/review/", "/metrics/", "/runs/"])
                    url, headers, kind = f"{pooled_server}{path}", page, "page"
                status, ctype, _ = _fetch(url, headers=headers)
                answers.append((kind, status, ctype))

        loaders = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(3)]
        for t in loaders:
            t.start()
        with _admin() as admin:
            # Every 1.5 s until nearly the whole batch is through (at least 8 rounds): what is
            # measured after is the tail the fault left, not the batch's own length.
            rounds = 0
            while rounds < 8 or (settled_count(runs) < 45 and rounds < 60):
                time.sleep(1.5)
                terminated += _terminate_backends(admin, spare=spare)
                rounds += 1
        fault_ended = time.monotonic()
        time.sleep(2)  # the load goes on a little after the last termination
        stop.set()
        for t in loaders:
            t.join(30)
        report = measure(
            "database-backends-terminated-50-runs",
            runs,
            fault_ended=fault_ended,
            backends_terminated=terminated,
            requests=len(answers),
            answered_503=sum(1 for _, s, _ in answers if s == 503),
            succeeded=lambda: sum(1 for r in runs if _status(r) == "succeeded"),
        )
    codes = {(kind, status) for kind, status, _ in answers}
    # Every answer was a success or a quick 503 — never a 500 — and the API's were JSON.
    assert codes <= {("api", 200), ("api", 503), ("page", 200), ("page", 503)}, codes
    assert all(ctype.startswith("application/json") for kind, _, ctype in answers if kind == "api")
    assert terminated >= 8, report.line()
    # And once the fault ended, everything answers again.
    assert _fetch(f"{pooled_server}/api/v1/runs/{ids[0]}", headers=api)[0] == 200
    assert _fetch(f"{pooled_server}/review/", headers=page)[0] == 200
    assert_invariants()


def _status(run: Any) -> str:
    run.refresh_from_db(fields=["status"])
    return str(run.status)


# --- the model -------------------------------------------------------------------------------

FIVE_MB = "x" * (5 * 1024 * 1024)
UNKNOWN_TOOL = {
    "actions": [
        {
            "action_type": "format_disk",
            "payload": {"device": "/dev/sda"},
            "confidence": 0.99,
            "rationale": "tidy up",
        }
    ]
}
THOUSAND_TOOL_CALLS = [
    {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "send_reply", "arguments": '{"body": "hi"}'},
    }
    for i in range(1000)
]


def _thousand_actions() -> dict[str, Any]:
    action = CANNED["Proposal"]["actions"][1]
    return {"actions": [action] * 1000}


# kind -> (what the server answers, how many of a run's requests get it before it behaves;
# None: every request). The first three recover; the rest never give a usable answer.
FAULTS: dict[str, tuple[Any, int | None]] = {
    "rate_limited": (Scripted(status=429, headers={"retry-after": "1"}), 2),
    "server_error": (Scripted(status=500), 2),
    "slow": (Scripted(delay=2.5), 1),
    "invalid_json": (Scripted(content='{"category": "billing", '), None),
    "unknown_tool": (UNKNOWN_TOOL, None),
    "five_mb": (Scripted(content=FIVE_MB), None),
    "thousand_actions": (None, None),  # built per request (the schema decides)
    "thousand_tool_calls": (
        Scripted(content=None, message_extra={"tool_calls": THOUSAND_TOOL_CALLS}),
        None,
    ),
    "always_times_out": (Scripted(delay=2.5), None),
}
RECOVERABLE = {"rate_limited", "server_error", "slow"}


def test_malformed_model_output_and_model_faults_settle_every_run(
    cluster, sends_to, agent, policies, ticket, tmp_path, django_db_blocker
):
    from workflows.models import Action, RunStatus

    seen: dict[str, int] = {}
    lock = threading.Lock()

    def responder(request: dict[str, Any]) -> Any:
        text = json.dumps(request.get("messages", []))
        marker = re.search(r"chaos-(\w+)-(\d+)", text)
        if marker is None:
            return CANNED[schema_name(request)]
        kind = marker.group(1)
        with lock:
            n = seen[marker.group(0)] = seen.get(marker.group(0), 0) + 1
        answer, times = FAULTS[kind]
        if times is not None and n > times:
            return CANNED[schema_name(request)]
        if kind == "thousand_actions":
            if schema_name(request) == "Proposal":
                return _thousand_actions()
            return CANNED[schema_name(request)]
        if kind == "unknown_tool" and schema_name(request) != "Proposal":
            return CANNED[schema_name(request)]
        return answer

    with FakeOpenAI() as fake:
        fake.responder = responder
        model_env = {
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_TIMEOUT": "1",
            "OPENAI_MAX_ATTEMPTS": "3",
            "OPENAI_BUDGET_SECONDS": "8",
        }
        with _own_cluster(cluster, tmp_path, django_db_blocker, **model_env) as c:
            sends_to(c)
            c.start_worker(concurrency=3)
            with Reconciler():
                t0 = time.monotonic()
                runs = {
                    (kind, i): start_run(
                        workflow="support_triage",
                        input={**ticket, "subject": f"chaos-{kind}-{i}"},
                    )
                    for kind in FAULTS
                    for i in range(1)
                }
                measure(
                    "model-faults-and-malformed-output",
                    list(runs.values()),
                    fault_ended=t0,
                    timeout=180,
                    model_requests=lambda: len(fake.requests),
                    outcomes=lambda: ",".join(f"{k}:{_status(r)}" for (k, _), r in runs.items()),
                )
    for (kind, _), run in runs.items():
        run.refresh_from_db()
        if kind in RECOVERABLE:
            # A fault that passes within the budget costs time, not the run.
            assert run.status in (RunStatus.WAITING, RunStatus.SUCCEEDED), (kind, run.error)
    # Nothing the model invented ran, and no answer made more actions than a proposal holds.
    assert not Action.objects.filter(action_type="format_disk").exists()
    for run in runs.values():
        assert Action.objects.filter(run=run).count() <= 10
    assert_invariants()


# --- policy ----------------------------------------------------------------------------------


def test_a_policy_edited_between_escalation_and_decision_keeps_the_runs_pinned_version(
    cluster, sends_to, reconciler, agent, policies, ticket, alice, admin_user
):
    from escalations.actions import decide_escalation, save_policy
    from escalations.models import AutonomyPolicy, Verdict, Via
    from workflows.models import Action, Effect, PolicyOutcome, RunStatus

    sends_to(cluster)
    runs = [
        start_run(workflow="support_triage", input={**ticket, "subject": f"pinned {i}"})
        for i in range(3)
    ]
    for run in runs:
        wait_for_run(run, RunStatus.WAITING, timeout=60)
    replies = [Action.objects.get(run=run, action_type="send_reply") for run in runs]
    versions = {a.pk: a.policy_version for a in replies}
    # Between escalation and decision, the admin blocks replies outright (a new version).
    policy = AutonomyPolicy.objects.get(pk=replies[0].policy_id)
    policy.outcome = PolicyOutcome.BLOCK
    save_policy(policy=policy, user=admin_user)
    t0 = time.monotonic()
    for reply in replies:
        decide_escalation(
            escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    measure("policy-edited-before-decision", runs, fault_ended=t0, timeout=60)
    for run, reply in zip(runs, replies, strict=True):
        run.refresh_from_db()
        reply.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        # Held to the version it was escalated under: approved and executed, once.
        assert reply.policy_version == versions[reply.pk] != policy.version
        assert Effect.objects.filter(action=reply).count() == 1
    assert_invariants()
