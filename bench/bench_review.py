"""The reviewer's desk: /review/ server time at 1k, 10k and 100k open escalations, and the
time from an escalation's commit to its row arriving on open websockets at 50 per second.

Server time is measured in-process through Django's test client (middleware, access
helper, queries, template rendering; no network), as a reviewer (alice, Support: half the
escalations) and as an admin (every team). The query count per page is reported too: it
must not grow with the queue.

Push latency runs a real daphne process on the bench database and Redis with several
sessions connected to /ws/review/, while this process raises escalations through the real
actions at a steady 50 per second; each latency is the time from just before COMMIT to the
row's arrival on a socket (one clock: both ends are in this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from bench.harness import BenchEnv, Result, percentile

SIZES = (1_000, 10_000, 100_000)
REQUESTS = 40
RATE = 50.0
PUSH_SECONDS = 10.0
SOCKETS = 4
BACKGROUND = 1_000
PRODUCERS = 6

# Only inserted rows count as arrivals; a row re-rendered in place later is not a delivery.
_INSERTED = re.compile(
    r'hx-swap-oob="before(?:begin|end):[^"]*">\s*<article id="esc-([0-9a-f-]{36})"'
)


def _seed_open(env_data: dict[str, Any], count: int) -> None:
    """`count` more undecided escalations, bulk-inserted (the shape the queue reads)."""
    from django.db import connection
    from django.utils import timezone

    from escalations.models import Escalation, EscalationStatus
    from escalations.rendering import queue_card
    from escalations.risk import DUE_WITHOUT_SLA, RISK_ORDER
    from escalations.search import search_text_for
    from workflows.demo_tickets import make_ticket
    from workflows.models import Action, ActionStatus, RunStatus, WorkflowRun

    agent = env_data["agent"]
    teams = [env_data["support"], env_data["billing"]]
    alice = env_data["alice"]
    now = timezone.now()
    rnd = random.Random(count)
    types = ["send_reply", "update_crm", "route_to_team"]
    batch = 5_000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        runs, actions, escalations = [], [], []
        for i in range(n):
            # The rows as the desk shows them now: the ticket, a multi-line reply, a CRM
            # diff or a routing, policy reasons; SLAs on replies only (as in the demo).
            ticket = make_ticket(rnd, start + i)
            run = WorkflowRun(
                workflow="support_triage",
                workflow_version=1,
                agent=agent,
                status=RunStatus.WAITING,
                input=ticket,
            )
            action_type = types[i % 3]
            name = ticket["customer"].split(".")[0].capitalize()
            payload: dict[str, Any] = {
                "send_reply": {
                    "ticket_id": ticket["ticket_id"],
                    "to": ticket["customer"],
                    "body": f'Hi {name},\n\nThanks for writing about "{ticket["subject"]}".'
                    "\nWe are looking into it and will get back to you today.\n\nBest,\nSupport",
                },
                "update_crm": {
                    "ticket_id": ticket["ticket_id"],
                    "category": "billing",
                    "urgency": "high",
                },
                "route_to_team": {"ticket_id": ticket["ticket_id"], "team": "Billing"},
            }[action_type]
            confidence = round(rnd.random(), 2)
            action = Action(
                run=run,
                step_name="propose_actions",
                agent=agent,
                action_type=action_type,
                payload=payload,
                confidence=confidence,
                status=ActionStatus.ESCALATED,
                reasons=[
                    f"confidence {confidence:.2f} < 0.85 required for {action_type} at trust "
                    "'standard' (policy 'bench' v1)"
                ],
                rationale="bench",
                idempotency_key=f"bench:{uuid.uuid4()}",
            )
            claimed = rnd.random() < 0.1
            risk = rnd.choice(RISK_ORDER)
            escalations.append(
                Escalation(
                    action=action,
                    team=teams[i % 2],
                    status=EscalationStatus.CLAIMED if claimed else EscalationStatus.OPEN,
                    claimed_by=alice if claimed and i % 2 == 0 else None,
                    reasons=list(action.reasons),
                    summary="bench",
                    sla_due_at=now + timedelta(minutes=rnd.randint(60, 48 * 60))
                    if action_type == "send_reply"
                    else None,
                    risk=risk,
                    created_at=now,
                    due_without_sla_at=now + DUE_WITHOUT_SLA[risk],
                    search_text=search_text_for(
                        action_type=action_type, agent=agent.name, payload=payload, ticket=ticket
                    ),
                    card=queue_card(
                        action_type=action_type,
                        payload=payload,
                        ticket=ticket,
                        reasons=action.reasons,
                        agent=agent.name,
                        workflow=run.workflow,
                        confidence=confidence,
                        rationale=action.rationale,
                        home_team=agent.team.name,
                    ),
                )
            )
            runs.append(run)
            actions.append(action)
        WorkflowRun.objects.bulk_create(runs, batch_size=1_000)
        Action.objects.bulk_create(actions, batch_size=1_000)
        for esc in escalations:
            esc.action_id = esc.action.pk
        Escalation.objects.bulk_create(escalations, batch_size=1_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# What a reviewer searches for: a rare term (one ticket's number: one row of 100k) and a
# common one (two words of one ticket text in twelve: thousands of rows).
SEARCHES = {"search_rare": "?q=004242", "search_common": "?q=package+damaged"}


def _page_times(user: Any, query: str = "") -> tuple[list[float], int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")  # the bench runs the production settings' hosts
    client.force_login(user)
    url = "/review/" + query
    for _ in range(3):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    return times, len(queries.captured_queries)


def _server_time(env: BenchEnv, data: dict[str, Any]) -> list[Result]:
    results = []
    seeded = 0
    for size in SIZES:
        _seed_open(data, size - seeded)
        seeded = size
        label = f"{size // 1000}k"
        for who in ("alice", "admin"):
            times, queries = _page_times(data[who])
            target = "p95 < 50 ms" if size == SIZES[-1] else ""
            scope = "reviewer (one team)" if who == "alice" else "admin (all teams)"
            results += [
                Result(
                    f"queue_{label}_{who}_p50",
                    percentile(times, 50),
                    "ms",
                    better="lower",
                    notes=f"/review/ server time, {scope}, {size} open",
                ),
                Result(
                    f"queue_{label}_{who}_p95",
                    percentile(times, 95),
                    "ms",
                    target=target,
                    better="lower",
                    notes=f"/review/ server time, {scope}, {size} open",
                ),
                Result(
                    f"queue_{label}_{who}_queries",
                    queries,
                    "queries",
                    target="constant",
                    better="lower",
                ),
            ]
            for name, query in SEARCHES.items():
                times, queries = _page_times(data[who], query)
                results += [
                    Result(
                        f"queue_{label}_{who}_{name}_p95",
                        percentile(times, 95),
                        "ms",
                        target=target,
                        better="lower",
                        notes=f"/review/{query} server time, {scope}, {size} open",
                    ),
                    Result(
                        f"queue_{label}_{who}_{name}_queries",
                        queries,
                        "queries",
                        target="constant",
                        better="lower",
                    ),
                ]
    return results


# --- push latency ----------------------------------------------------------------------------


def _session_cookie(user: Any) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


class _Listeners:
    """SOCKETS websocket sessions on a thread of their own, noting when each row arrives."""

    def __init__(self, url: str, cookies: list[str], origin: str) -> None:
        self.url, self.cookies, self.origin = url, cookies, origin
        self.arrivals: dict[str, list[float]] = {}
        self._seen: set[tuple[int, str]] = set()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the benchmark, not swallowed
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        import websockets

        async def listen(index: int, cookie: str, opened: asyncio.Event) -> None:
            async with websockets.connect(
                self.url,
                additional_headers={"Cookie": cookie},
                origin=self.origin,  # type: ignore[arg-type]
                max_size=None,
            ) as ws:
                await ws.recv()  # the snapshot
                opened.set()
                while not self.stop.is_set():
                    try:
                        message = await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        continue
                    now = time.time()
                    text = message if isinstance(message, str) else message.decode()
                    with self._lock:
                        for pk in _INSERTED.findall(text):
                            if (index, pk) not in self._seen:
                                self._seen.add((index, pk))
                                self.arrivals.setdefault(pk, []).append(now)

        events = [asyncio.Event() for _ in self.cookies]
        tasks = [
            asyncio.create_task(listen(i, c, e))
            for i, (c, e) in enumerate(zip(self.cookies, events, strict=True))
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        self.ready.set()
        await asyncio.gather(*tasks)


def _raise_one(agent: Any, committed: dict[str, float], seq: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from escalations.models import Escalation
    from workflows.actions import propose_action
    from workflows.models import RunStatus, WorkflowRun

    with transaction.atomic():
        run = WorkflowRun.objects.create(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            status=RunStatus.WAITING,
            input={"ticket_id": "T-live", "subject": "Live one", "body": "b", "customer": "c"},
        )
        action = propose_action(
            run=run,
            step_name="propose_actions",
            action_type="send_reply",
            payload={"ticket_id": "T-live", "to": "ada@example.com", "body": "Hello"},
            confidence=0.9,
            rationale="bench",
        )
        esc = action.escalation
        # Each one due sooner than everything before it, so it lands at the top of every
        # page's window (a row below the window is, correctly, not pushed at all). Sooner
        # than the background too: a critical one without an SLA is due 10 minutes after it
        # was raised (escalations.risk.DUE_WITHOUT_SLA), and with rows due at +30 min, as
        # here before, every push fell below the first page and none arrived.
        Escalation.objects.filter(pk=esc.pk).update(
            sla_due_at=timezone.now() + timedelta(minutes=5) - timedelta(seconds=seq)
        )
        committed[str(esc.pk)] = time.time()


def _produce(agent: Any, committed: dict[str, float], k: int, started: float, total: int) -> None:
    from django.db import connection

    try:
        for i in range(k, total, PRODUCERS):
            delay = started + i / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            _raise_one(agent, committed, i)
    finally:
        connection.close()


def _push_latency(env: BenchEnv, data: dict[str, Any]) -> list[Result]:
    _seed_open(data, BACKGROUND)
    with env.daphne("review") as base:
        cookies = [_session_cookie(data["alice"]) for _ in range(SOCKETS - 1)]
        cookies.append(_session_cookie(data["admin"]))
        listeners = _Listeners(base.replace("http://", "ws://") + "/ws/review/", cookies, base)
        listeners.thread.start()
        listeners.ready.wait(60)
        if listeners.error is not None:
            raise RuntimeError("websocket listeners failed") from listeners.error
        committed: dict[str, float] = {}
        total = int(RATE * PUSH_SECONDS)
        started = time.perf_counter()
        # Raising one escalation takes longer than 1/RATE here, so several producers share
        # the schedule, each paced against it (a late one is caught up, not skipped).
        producers = [
            threading.Thread(target=_produce, args=(data["agent"], committed, k, started, total))
            for k in range(PRODUCERS)
        ]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        achieved = total / (time.perf_counter() - started)
        # Late is measured, never-arrived is counted: neither is hidden by a timeout.
        with contextlib.suppress(TimeoutError):
            env.wait_until(
                lambda: all(len(listeners.arrivals.get(pk, [])) >= SOCKETS for pk in committed),
                timeout=30,
            )
        listeners.stop.set()
        listeners.thread.join(10)
    latencies = [
        (arrived - committed[pk]) * 1000
        for pk, times in listeners.arrivals.items()
        if pk in committed
        for arrived in times
    ]
    notes = f"{SOCKETS} sockets, {BACKGROUND} open in the background, {total} raised"
    missed = SOCKETS * len(committed) - len(latencies)
    return [
        Result("push_rate_achieved", achieved, "esc/s", target=f"{RATE:.0f}", notes=notes),
        Result("push_missed", missed, "rows", target="0", better="lower", notes=notes),
        Result("push_p50", percentile(latencies, 50), "ms", better="lower", notes=notes),
        Result(
            "push_p95",
            percentile(latencies, 95),
            "ms",
            target="p95 < 100 ms",
            better="lower",
            notes=notes,
        ),
    ]


def run(env: BenchEnv) -> list[Result]:
    data = env.reset()
    push = _push_latency(env, data)
    data = env.reset()
    return push + _server_time(env, data)
