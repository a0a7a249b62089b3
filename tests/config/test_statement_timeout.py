"""A web request never waits on a stuck query longer than DB_STATEMENT_TIMEOUT_MS: it answers
the database-unavailable 503 (JSON on the API, the styled page elsewhere), and the server
is fine once the lock is gone. Against a real daphne, with a table locked by this test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import Client

from api.actions import create_api_token
from tests.conftest import _free_port, _service_env, _stop
from tests.support import processes

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT_MS = 500


@pytest.fixture
def limited_server(django_db_blocker: Any, worker_log_dir: Path) -> Iterator[str]:
    with django_db_blocker.unblock():
        env = {**_service_env(), "DB_STATEMENT_TIMEOUT_MS": str(LIMIT_MS)}
    port = _free_port()
    log = worker_log_dir / "daphne-statement-timeout.log"
    proc = processes.start_daphne(env=env, log_path=log, port=port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def _locked(table: str) -> Any:
    """An open transaction of this test's holding `table` so nothing else may read it."""
    atomic = transaction.atomic()
    atomic.__enter__()
    with connection.cursor() as cursor:
        cursor.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    return atomic


def _timed(url: str, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    # The client's own timeout is far past the limit: a request that waits out the lock
    # fails the test with a timeout rather than hanging it.
    r = httpx.get(url, headers=headers, timeout=20)
    return r, time.monotonic() - t0


def test_a_request_stuck_on_a_lock_answers_503_after_the_statement_timeout(
    limited_server, agent, alice
):
    _, raw = create_api_token(agent=agent, name="stuck")
    api = {"Authorization": f"Bearer {raw}"}
    client = Client()
    client.force_login(alice)
    page = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}"}
    escalations = f"{limited_server}/api/v1/escalations"
    assert httpx.get(escalations, headers=api, timeout=20).status_code == 403  # not a reviewer
    assert httpx.get(f"{limited_server}/review/", headers=page, timeout=20).status_code == 200

    # The API's token lookup, then the pages' session read, each stuck behind a lock.
    for table, url, headers in (
        ("api_apitoken", escalations, api),
        ("django_session", f"{limited_server}/review/", page),
    ):
        atomic = _locked(table)
        try:
            r, took = _timed(url, headers)
        finally:
            atomic.__exit__(None, None, None)
        assert r.status_code == 503, (table, r.status_code, r.text[:300])
        assert r.headers["Retry-After"].isdigit()
        if "/api/" in url:
            assert r.json() == {"detail": "The database is unavailable; retry shortly."}
        else:
            assert "briefly unavailable" in r.text
        # Generous for a loaded machine; without the limit it waits out the whole lock.
        assert took < 10, (table, took)

    # The lock gone, the same requests are answered as before.
    assert httpx.get(escalations, headers=api, timeout=20).status_code == 403
    assert httpx.get(f"{limited_server}/review/", headers=page, timeout=20).status_code == 200
