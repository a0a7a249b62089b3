"""/metrics/ server time over a large history (issue 9): target p95 < 300 ms at 1M actions.

The history is built fast: 10,000 actions through the ORM, then doubled in SQL (each copy a
new id and idempotency key) until it passes the target size; 20,000 of them escalated and
decided by a person. The action table's triggers keep the daily rollup (review/metrics/
rollups.py); the deltas the seeding wrote are folded as beat would before timing. Timed
through Django's test client: server time, no network.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from bench.harness import BenchEnv, Result, percentile

BASE_ACTIONS = 10_000
TARGET_ACTIONS = 1_000_000
DECIDED = 20_000
REQUESTS = 20


def _seed(data: dict[str, Any]) -> int:
    from django.utils import timezone

    from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
    from workflows.models import Action, ActionStatus, PolicyOutcome, RunStatus, WorkflowRun
    from workflows.prompts.models import ModelCall

    rng = random.Random(11)
    now = timezone.now()
    agent = data["agent"]
    runs = WorkflowRun.objects.bulk_create(
        WorkflowRun(
            workflow="support_triage",
            workflow_version=1,
            agent=agent,
            input={"subject": f"ticket {i}"},
            status=rng.choice([RunStatus.SUCCEEDED] * 8 + [RunStatus.FAILED, RunStatus.WAITING]),
            created_at=now - timedelta(minutes=rng.randint(0, 60 * 24 * 25)),
        )
        for i in range(BASE_ACTIONS // 3)
    )
    types = ["update_crm", "send_reply", "route_to_team"]
    actions = []
    for i in range(BASE_ACTIONS):
        outcome = rng.choice(
            [PolicyOutcome.AUTO] * 6 + [PolicyOutcome.REVIEW] * 3 + [PolicyOutcome.BLOCK]
        )
        actions.append(
            Action(
                run=runs[i % len(runs)],
                step_name="propose_actions",
                agent=agent,
                action_type=types[i % 3],
                payload={"ticket_id": f"T-{i}"},
                confidence=round(rng.random(), 2),
                outcome=outcome,
                status=ActionStatus.EXECUTED
                if outcome == PolicyOutcome.AUTO
                else ActionStatus.ESCALATED,
                idempotency_key=f"bench:{i}",
                created_at=(created := now - timedelta(minutes=rng.randint(0, 60 * 24 * 25))),
                executed_at=created + timedelta(seconds=1)
                if outcome == PolicyOutcome.AUTO
                else None,
            )
        )
    Action.objects.bulk_create(actions, batch_size=2000)
    ModelCall.objects.bulk_create(
        [
            ModelCall(
                run=run,
                step_name="classify",
                prompt_name="triage.classify",
                prompt_version=1,
                model="bench-model",
                ok=True,
                input_tokens=rng.randint(300, 900),
                output_tokens=rng.randint(40, 200),
                cost_usd=Decimal("0.000420"),
                created_at=run.created_at,
            )
            for run in runs
        ],
        batch_size=2000,
    )
    # A history of a million actions has hundreds of thousands of runs and model calls too.
    size = _double(Action, BASE_ACTIONS, TARGET_ACTIONS, unique="idempotency_key")
    _double(WorkflowRun, len(runs), TARGET_ACTIONS // 3)
    _double(ModelCall, len(runs), TARGET_ACTIONS // 3)
    # 20,000 of the escalated actions (spread over the whole history) decided by a person.
    decided = list(
        Action.objects.filter(outcome=PolicyOutcome.REVIEW)
        .only("pk", "created_at")
        .order_by("idempotency_key")[:DECIDED]
    )
    verdicts = [rng.choice([Verdict.APPROVE] * 4 + [Verdict.REJECT]) for _ in decided]
    escalations = Escalation.objects.bulk_create(
        [
            Escalation(
                action=a,
                team=data["support"],
                status=EscalationStatus.APPROVED
                if verdict == Verdict.APPROVE
                else EscalationStatus.REJECTED,
                reasons=["bench"],
                created_at=a.created_at,
            )
            for a, verdict in zip(decided, verdicts, strict=True)
        ],
        batch_size=2000,
    )
    Decision.objects.bulk_create(
        [
            Decision(
                escalation=e,
                verdict=verdict,
                decided_by=data["alice"],
                via=Via.WEB,
                reason=""
                if verdict == Verdict.APPROVE
                else rng.choice(["wrong customer", "tone", "missing order number"]),
                created_at=e.created_at + timedelta(seconds=rng.randint(5, 3600)),
            )
            for e, verdict in zip(escalations, verdicts, strict=True)
        ],
        batch_size=2000,
    )
    return size


def _double(model: Any, count: int, target: int, unique: str = "") -> int:
    """Copy the table onto itself in SQL (new ids) until it holds at least `target` rows."""
    from django.db import connection

    table = model._meta.db_table
    pk = model._meta.pk
    n = 0
    with connection.cursor() as cursor:
        while count < target:
            n += 1
            exprs: dict[str, str] = {}
            for field in model._meta.concrete_fields:
                column = str(field.column)
                if field is pk:
                    if pk.get_internal_type() == "UUIDField":
                        exprs[column] = "gen_random_uuid()"
                    # else: the sequence gives the copy its id
                elif column == unique:
                    exprs[column] = f"{column} || '-{n}'"
                else:
                    exprs[column] = column
            # Only the model's own table and column names and a loop counter are interpolated.
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(exprs)}) "
                f"SELECT {', '.join(exprs.values())} FROM {table}"
            )
            count *= 2
        cursor.execute(f"ANALYZE {table}")
    return count


def run(env: BenchEnv) -> list[Result]:
    from django.db import connection
    from django.test import Client

    data = env.seed()
    from review.metrics.rollups import compact

    started = time.perf_counter()
    size = _seed(data)
    seeded_in = time.perf_counter() - started
    # The action triggers wrote one delta per action; beat folds them every minute.
    started = time.perf_counter()
    compact()
    compacted_in = time.perf_counter() - started
    client = Client(HTTP_HOST="127.0.0.1")  # production settings: no testserver host
    client.force_login(data["admin"])
    client.get("/metrics/?period=30")  # warm: templates, the policy cache, the connection
    statements: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        client.get("/metrics/?period=30")
    times = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get("/metrics/?period=30")
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
    notes = (
        f"{size:,} actions, ~{size // 3:,} runs and model calls, {DECIDED:,} decided "
        "escalations, admin view of 30 days; "
        f"history built in {seeded_in:.0f} s; folding its rollup deltas "
        f"(beat's job) took {compacted_in:.1f} s"
    )
    return [
        Result(
            "dashboard_queries",
            len(statements),
            "queries",
            better="lower",
            notes="per dashboard request, the session's included",
        ),
        Result("dashboard_1m_p50", percentile(times, 50), "ms", better="lower", notes=notes),
        Result(
            "dashboard_1m_p95",
            percentile(times, 95),
            "ms",
            target="p95 < 300 ms",
            better="lower",
            notes=notes,
        ),
    ]
