"""Policy evaluation (issue 4): latency of `evaluate` per action with 10, 100 and 1,000
policies in the database, warm (the compiled set cached, one stamp query per evaluation) and
right after a change (the set recompiled), plus queries per evaluation.

The policies are varied like a real deployment's: spread over action types, workflows and 20
agents, a tenth with payload patterns, some with amount caps, trust-level bars and quorum;
rate-capped ones are scoped to other agents (a matching rate cap adds one COUNT query; it is
measured separately).
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

from bench.harness import BenchEnv, Result, percentile

SIZES = (10, 100, 1000)
N_EVALS = 3000
N_RECOMPILES = 7
TYPES = ("update_crm", "send_reply", "route_to_team", "issue_refund", "")
WORKFLOWS = ("support_triage", "", "", "billing_followup", "mentions")


def _policies(n: int, agents: list, rng: random.Random) -> list:
    from escalations.models import AutonomyPolicy
    from workflows.models import PolicyOutcome

    out = []
    for i in range(n):
        kind = rng.random()
        out.append(
            AutonomyPolicy(
                name=f"bench policy {i}",
                priority=rng.randint(0, 500),
                action_type=rng.choice(TYPES),
                workflow=rng.choice(WORKFLOWS),
                agent=rng.choice(agents) if rng.random() < 0.5 else None,
                outcome=PolicyOutcome.BLOCK
                if kind < 0.02
                else PolicyOutcome.REVIEW
                if kind < 0.15
                else PolicyOutcome.AUTO,
                min_confidence=round(rng.uniform(0.4, 0.9), 2),
                min_confidence_probation=0.95 if rng.random() < 0.3 else None,
                min_confidence_trusted=0.5 if rng.random() < 0.3 else None,
                max_amount=Decimal(rng.choice([50, 100, 500])) if rng.random() < 0.3 else None,
                irreversible_requires_review=rng.random() < 0.7,
                review_patterns="lawyer\nchargeback" if rng.random() < 0.1 else "",
                block_patterns=r"password\s*[:=]" if rng.random() < 0.05 else "",
                approvals_required=2 if rng.random() < 0.1 else 1,
            )
        )
    return out


def _time_evals(agent, rng: random.Random, n: int) -> tuple[list[float], list[float]]:
    from escalations.policy import evaluate

    payloads: dict[str, dict[str, Any]] = {
        "update_crm": {"ticket_id": "T-1", "category": "billing", "urgency": "high"},
        "send_reply": {"ticket_id": "T-1", "to": "a@example.com", "body": "Hello, thanks " * 20},
        "route_to_team": {"ticket_id": "T-1", "team": "Billing"},
        "issue_refund": {"ticket_id": "T-1", "amount": 75},
    }
    types = list(payloads)
    samples, cpu = [], []
    for _ in range(n):
        action_type = rng.choice(types)
        started, started_cpu = time.perf_counter(), time.thread_time()
        evaluate(
            agent=agent,
            workflow="support_triage",
            action_type=action_type,
            confidence=rng.random(),
            payload=payloads[action_type],
        )
        samples.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return samples, cpu


def run(env: BenchEnv) -> list[Result]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from escalations.models import AgentProfile, AutonomyPolicy
    from escalations.policy import clear_cache, evaluate

    data = env.seed()
    agent = data["agent"]
    others = [
        AgentProfile.objects.create(name=f"bench-agent-{i}", team=data["support"])
        for i in range(19)
    ]
    agents = [agent, *others]
    rng = random.Random(4)
    results: list[Result] = []
    for size in SIZES:
        AutonomyPolicy.objects.all().delete()
        policies = _policies(size, agents, rng)
        # Rate caps on other agents' policies: in the set, never counted for this agent.
        for p in policies[: max(1, size // 20)]:
            p.agent = others[0]
            p.rate_limit_count, p.rate_limit_window_minutes = 100, 60
        AutonomyPolicy.objects.bulk_create(policies)
        clear_cache()
        _time_evals(agent, rng, 200)  # warm up: compile once, warm the connection

        samples, cpu = _time_evals(agent, rng, N_EVALS)
        with CaptureQueriesContext(connection) as queries:
            _time_evals(agent, rng, 20)
        target = "p99 < 1 ms" if size == 1000 else ""
        results += [
            Result(
                f"eval_p50_{size}_policies", percentile(samples, 50) * 1000, "ms", better="lower"
            ),
            Result(
                f"eval_p99_{size}_policies",
                percentile(samples, 99) * 1000,
                "ms",
                target=target,
                better="lower",
                notes=f"{N_EVALS} evaluations, warm cache, one stamp query each",
            ),
            Result(
                f"eval_cpu_p99_{size}_policies",
                percentile(cpu, 99) * 1000,
                "ms",
                better="lower",
                notes="this process's CPU time only: without the stamp query's wait and "
                "without time the scheduler gave other processes",
            ),
            Result(
                f"queries_per_eval_{size}_policies", len(queries) / 20, "queries", better="lower"
            ),
        ]

        # Right after a change: the first evaluation anywhere recompiles the set.
        recompiles = []
        for i in range(N_RECOMPILES):
            AutonomyPolicy.objects.filter(pk=policies[0].pk).update(priority=i)
            started = time.perf_counter()
            evaluate(
                agent=agent,
                workflow="support_triage",
                action_type="update_crm",
                confidence=0.9,
                payload={"ticket_id": "T-1"},
            )
            recompiles.append(time.perf_counter() - started)
        results.append(
            Result(
                f"eval_after_change_{size}_policies",
                percentile(recompiles, 50) * 1000,
                "ms",
                better="lower",
                notes="first evaluation after a policy change (recompile)",
            )
        )

    # A rate cap that matches costs a COUNT over the agent's recent actions.
    AutonomyPolicy.objects.all().delete()
    AutonomyPolicy.objects.create(
        name="capped crm",
        action_type="update_crm",
        outcome="auto",
        min_confidence=0.0,
        rate_limit_count=100000,
        rate_limit_window_minutes=60,
    )
    clear_cache()
    capped = []
    for _ in range(500):
        started = time.perf_counter()
        evaluate(
            agent=agent,
            workflow="support_triage",
            action_type="update_crm",
            confidence=0.9,
            payload={"ticket_id": "T-1"},
        )
        capped.append(time.perf_counter() - started)
    results.append(
        Result(
            "eval_p99_with_matching_rate_cap",
            percentile(capped, 99) * 1000,
            "ms",
            better="lower",
            notes="one policy with a rate cap that applies: + one COUNT",
        )
    )
    return results
