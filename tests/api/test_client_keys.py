"""The client's run starts carry an idempotency key made once per call and sent again on
every retry, so a retry after a lost answer finds the run instead of starting another."""

import json

import httpx
import pytest

from caliber_client import Caliber, InvalidRequest


class FlakyServer:
    """Answers 500 to the first POST /runs (as after a commit whose connection then dropped),
    then what a Caliber with that run answers: the run for a key it has seen."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.bodies: list[dict] = []
        self.runs: dict[str, dict] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        key = body["idempotency_key"]
        run = self.runs.setdefault(key, {"id": f"run-{len(self.runs) + 1}", "status": "pending"})
        if self.failures:
            self.failures -= 1
            return httpx.Response(500, json={"detail": "server error"})
        return httpx.Response(201 if len(self.bodies) == 1 else 200, json=run)


@pytest.fixture(autouse=True)
def _no_sleeping(monkeypatch):
    monkeypatch.setattr("caliber_client.client.time.sleep", lambda s: None)


def test_a_run_start_retried_after_a_500_sends_the_same_key_and_gets_one_run():
    server = FlakyServer(failures=1)
    with Caliber("http://caliber.test", "cal_x", transport=httpx.MockTransport(server)) as c:
        run = c.start_run("support_triage", {"ticket_id": "T-1"})
    assert len(server.bodies) == 2
    assert server.bodies[0]["idempotency_key"] == server.bodies[1]["idempotency_key"]
    assert run["id"] == "run-1"
    assert len(server.runs) == 1


def test_a_key_given_by_the_caller_is_sent_as_is():
    server = FlakyServer(failures=0)
    with Caliber("http://caliber.test", "cal_x", transport=httpx.MockTransport(server)) as c:
        c.start_run("support_triage", {"ticket_id": "T-1"}, idempotency_key="ticket-T-1")
        c.start_run("support_triage", {"ticket_id": "T-1"}, idempotency_key="ticket-T-1")
    assert [b["idempotency_key"] for b in server.bodies] == ["ticket-T-1", "ticket-T-1"]
    assert len(server.runs) == 1


def test_separate_calls_without_a_key_are_separate_runs():
    server = FlakyServer(failures=0)
    with Caliber("http://caliber.test", "cal_x", transport=httpx.MockTransport(server)) as c:
        c.start_run("support_triage", {"ticket_id": "T-1"})
        c.start_run("support_triage", {"ticket_id": "T-2"})
    assert len(server.runs) == 2


def test_a_422_is_not_retried():
    calls = []

    def invalid(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(422, json={"detail": [{"loc": ["body", "input", "subject"]}]})

    transport = httpx.MockTransport(invalid)
    with (
        Caliber("http://caliber.test", "cal_x", transport=transport) as c,
        pytest.raises(InvalidRequest) as exc,
    ):
        c.start_run("support_triage", {})
    assert len(calls) == 1
    assert exc.value.detail[0]["loc"] == ["body", "input", "subject"]
