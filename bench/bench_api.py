"""The agent API through a real daphne process on PostgreSQL + Redis.

submit: actions per second on the auto path (POST /api/v1/actions, policy-evaluated, approved
at once), from several concurrent HTTP clients, and each request's latency.

round trip: an agent submits a customer reply (escalated), starts waiting for it with the
Python client (long-poll), a reviewer token approves it through the API at once, and the
agent's wait returns with the verdict. Two figures per trip: submit -> verdict seen, and
decision sent -> verdict seen (the system's own delay, without the submission).

One daphne process serves everything, with the app's default settings (DB_CONN_MAX_AGE=0).
Django runs sync views one at a time per ASGI process, so the submit rate is one process's
ceiling; more server processes scale it.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.harness import BenchEnv, Result, percentile

CLIENTS = 8


def _quick(env: BenchEnv) -> bool:
    return bool(getattr(env, "quick", False))


def _submit_auto(base: str, raw: str, n: int) -> list[Result]:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    per_client = n // CLIENTS

    def client(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {raw}"}) as http:
            for j in range(per_client):
                body = {
                    "agent": "triage-agent",
                    "action_type": "update_crm",
                    "payload": {"ticket_id": f"T-{i}-{j}", "priority": "high"},
                    "confidence": 0.97,
                    "idempotency_key": str(uuid.uuid4()),
                }
                t0 = time.perf_counter()
                r = http.post("/api/v1/actions", json=body)
                elapsed = time.perf_counter() - t0
                if r.status_code != 201 or r.json()["status"] != "auto_approved":
                    raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:300]}")
                with lock:
                    latencies.append(elapsed * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - started
    done = per_client * CLIENTS
    notes = f"{done} actions, {CLIENTS} concurrent clients, one daphne process"
    return [
        Result("submit_auto_per_s", done / wall, "actions/s", notes=notes),
        Result("submit_auto_p50", percentile(latencies, 50), "ms", better="lower", notes=notes),
        Result("submit_auto_p95", percentile(latencies, 95), "ms", better="lower", notes=notes),
    ]


def _round_trips(base: str, agent_raw: str, reviewer_raw: str, n: int) -> list[Result]:
    from caliber_client import Caliber

    whole: list[float] = []
    system: list[float] = []
    payload = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded."}
    with (
        Caliber(base, agent_raw, agent="triage-agent") as agent,
        Caliber(base, reviewer_raw) as reviewer,
    ):
        for i in range(n):
            seen: dict[str, Any] = {}
            t0 = time.perf_counter()
            approval = agent.request_approval(
                "send_reply", {**payload, "ticket_id": f"T-{i}"}, confidence=0.9
            )
            if approval.status != "escalated":
                raise RuntimeError(f"expected an escalation, got {approval.status}")

            def wait(approval: Any = approval, seen: dict[str, Any] = seen) -> None:
                seen["approval"] = agent.wait(approval, timeout=30)
                seen["at"] = time.perf_counter()

            waiter = threading.Thread(target=wait)
            waiter.start()
            decided_at = time.perf_counter()
            reviewer.decide(str(approval.escalation_id), "approve")
            waiter.join(60)
            if seen.get("approval") is None or seen["approval"].status != "approved":
                raise RuntimeError(f"the agent did not see the approval of {approval.id}")
            whole.append((seen["at"] - t0) * 1000)
            system.append((seen["at"] - decided_at) * 1000)
    notes = f"{n} escalate -> decide via API -> long-poll sees verdict, one at a time"
    return [
        Result("roundtrip_p50", percentile(whole, 50), "ms", better="lower", notes=notes),
        Result("roundtrip_p95", percentile(whole, 95), "ms", better="lower", notes=notes),
        Result("decide_to_seen_p50", percentile(system, 50), "ms", better="lower", notes=notes),
        Result("decide_to_seen_p95", percentile(system, 95), "ms", better="lower", notes=notes),
    ]


def run(env: BenchEnv) -> list[Result]:
    from api.actions import create_api_token

    data = env.reset()
    _, agent_raw = create_api_token(agent=data["agent"], name="bench")
    from escalations.models import AgentProfile

    # The reviewer's own tooling: an agent's token never decides that agent's escalations.
    console, _ = AgentProfile.objects.get_or_create(
        name="review-console", defaults={"team": data["agent"].team}
    )
    _, reviewer_raw = create_api_token(agent=console, reviewer=True, user=data["alice"])
    with env.daphne("api") as base:
        results = _submit_auto(base, agent_raw, 40 if _quick(env) else 800)
        results += _round_trips(base, agent_raw, reviewer_raw, 5 if _quick(env) else 60)
        return results
