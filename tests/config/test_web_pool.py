"""The web server's connection pool gets every connection back: websocket pages opened and
closed (also before their snapshot), long-polls answered, timed out and abandoned by their
client mid-wait. Against a real daphne whose pool is two connections, so one connection
kept by a thread that is done with it shows as 503s straight away. And a pool whose idle
connections were all terminated answers the next requests (config.asgi.check_or_drain)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from api.actions import create_api_token
from tests.conftest import _free_port, _service_env, _stop
from tests.support import processes

pytestmark = pytest.mark.django_db(transaction=True)

POOL = 2
REPLY = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded, sorry."}


@pytest.fixture
def small_pool_server(
    request: pytest.FixtureRequest, django_db_blocker: Any, worker_log_dir: Path
) -> Iterator[str]:
    with django_db_blocker.unblock():
        # A wait long enough for requests abandoned mid-work to finish on a loaded machine:
        # what never comes back fails the test however long the wait.
        env = {**_service_env(), "DB_POOL_MAX": str(POOL), "DB_POOL_TIMEOUT": "5"}
    port = _free_port()
    # One log per test: a failure's log is not overwritten by the next test's.
    log = worker_log_dir / f"daphne-pool-{request.node.name}.log"
    proc = processes.start_daphne(env=env, log_path=log, port=port)
    yield f"127.0.0.1:{port}"
    _stop(proc)


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def _escalated_action(base: str, agent: Any, key: str) -> tuple[dict[str, str], str]:
    """An API token's headers, and the URL of an action it proposed that went to a person."""
    _, raw = create_api_token(agent=agent)
    headers = {"Authorization": f"Bearer {raw}"}
    r = httpx.post(
        f"{base}/api/v1/actions",
        json={
            "agent": "triage-agent",
            "action_type": "send_reply",
            "payload": REPLY,
            "confidence": 0.9,
            "idempotency_key": key,
        },
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    action = r.json()
    assert action["status"] == "escalated", action
    return headers, f"{base}/api/v1/actions/{action['id']}"


def test_the_pool_gets_every_connection_back(small_pool_server, agent, policies, alice):
    host = small_pool_server
    base = f"http://{host}"
    headers, action_url = _escalated_action(base, agent, "k-1")
    cookie = _session_cookie(alice)

    async def churn() -> None:
        ws_headers = {"Cookie": cookie, "Origin": base}
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            for _ in range(3):
                # A detail page's socket for an escalation that is not there.
                async with websockets.connect(
                    f"ws://{host}/ws/review/?watch=00000000-0000-0000-0000-000000000000",
                    additional_headers=ws_headers,
                ) as ws:
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 10)
                # A page gone before its snapshot was read.
                ws = await websockets.connect(
                    f"ws://{host}/ws/review/", additional_headers=ws_headers
                )
                await ws.close()
                # A page that reads its snapshot, then goes.
                async with websockets.connect(
                    f"ws://{host}/ws/review/", additional_headers=ws_headers
                ) as ws:
                    await asyncio.wait_for(ws.recv(), 10)
                # A long-poll that times out.
                r = await client.get(action_url, params={"wait": 0.3})
                assert r.status_code == 200, r.text
                # Long-polls whose client gives up mid-wait, one and several at once.
                await asyncio.gather(
                    *(_abandoned(client, action_url, after) for after in (0.05, 0.1, 0.2, 0.5))
                )
                # Pages abandoned mid-request (a browser navigating away, htmx aborting).
                async with httpx.AsyncClient(headers={"Cookie": cookie}) as pages:
                    for path in ("/review/", "/metrics/", "/runs/"):
                        for after in (0.01, 0.05, 0.2):
                            with contextlib.suppress(httpx.TimeoutException):
                                await pages.get(f"{base}{path}", timeout=after)

    asyncio.run(churn())

    # Nothing holds a connection but the health check that reads the figures, once the
    # abandoned requests' threads have finished their work (on a machine loaded by the rest
    # of the suite, 27 abandoned page views queued on a pool of two take a while).
    deadline = time.monotonic() + 45
    while True:
        pool = httpx.get(f"{base}/healthz", timeout=20).json()["database_pool"]
        if (pool["in_use"], pool["waiting"]) == (1, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert pool["max"] == POOL, pool
    assert (pool["in_use"], pool["waiting"]) == (1, 0), (pool, _server_sessions())

    # Every connection back: more requests in parallel than the pool holds, then in turn.
    async def load() -> list[int]:
        async with httpx.AsyncClient(headers=headers, timeout=20) as client:
            rs = await asyncio.gather(*(client.get(action_url) for _ in range(POOL * 3)))
            codes = [r.status_code for r in rs]
            for _ in range(POOL * 3):
                codes.append((await client.get(action_url)).status_code)
            return codes

    codes = asyncio.run(load())
    assert codes == [200] * len(codes), codes


def test_a_waiting_long_poll_holds_no_connection(small_pool_server, agent, policies):
    """Long-polls hold their request on the event loop and give their connection back
    between reads: more of them than the pool has connections wait at once, and meanwhile
    only the health check holds one."""
    base = f"http://{small_pool_server}"
    headers, action_url = _escalated_action(base, agent, "k-lp")

    async def polls() -> tuple[list[int], list[dict[str, int]]]:
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            waits = [
                asyncio.create_task(client.get(action_url, params={"wait": 3}))
                for _ in range(POOL * 2)
            ]
            seen = []
            for _ in range(4):
                await asyncio.sleep(0.4)
                health = (await client.get(f"{base}/healthz")).json()
                seen.append(health["database_pool"])
            return [r.status_code for r in await asyncio.gather(*waits)], seen

    codes, seen = asyncio.run(polls())
    assert codes == [200] * (POOL * 2), codes
    assert all((p["in_use"], p["waiting"]) == (1, 0) for p in seen), seen


def _server_sessions() -> list[tuple[Any, ...]]:
    """What the server's connections to the test database last did: which request kept
    one, should the pool not get it back."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, now() - state_change, left(query, 200) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return cursor.fetchall()


async def _abandoned(client: httpx.AsyncClient, url: str, after: float) -> None:
    with contextlib.suppress(httpx.TimeoutException):
        await client.get(url, params={"wait": 30}, timeout=after)


@pytest.fixture
def larger_pool_server(django_db_blocker: Any, worker_log_dir: Path) -> Iterator[str]:
    with django_db_blocker.unblock():
        env = {**_service_env(), "DB_POOL_MAX": "10", "DB_POOL_TIMEOUT": "3"}
    port = _free_port()
    log = worker_log_dir / "daphne-pool-drain.log"
    proc = processes.start_daphne(env=env, log_path=log, port=port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def test_connections_killed_while_idle_cost_no_request_a_503(larger_pool_server, alice):
    """Every backend of the database terminated while the pool sat idle (what the chaos
    tests do to the suite's shared daphne, a failover does in production): the next
    requests are answered, not 503 after the pool's wait spent discarding dead connections
    one backoff at a time."""
    base = larger_pool_server
    cookie = {"Cookie": _session_cookie(alice)}

    async def burst() -> None:
        async with httpx.AsyncClient(headers=cookie, timeout=30) as client:
            await asyncio.gather(*(client.get(f"{base}/review/") for _ in range(12)))

    # Grow the pool: idle connections for the termination to kill.
    for _ in range(10):
        asyncio.run(burst())
        pool = httpx.get(f"{base}/healthz", timeout=20).json()["database_pool"]
        if pool["open"] - pool["in_use"] >= 5:
            break
    assert pool["open"] - pool["in_use"] >= 5, pool

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        assert len(cursor.fetchall()) >= 5
    time.sleep(0.5)

    codes = [httpx.get(f"{base}/review/", headers=cookie, timeout=30).status_code for _ in range(3)]
    assert codes == [200] * 3, codes
