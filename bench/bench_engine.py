"""The engine: runs/s of a 5-step DAG with 3 parallel async steps through real workers, and
the overhead of durability (ledger + snapshots) as a ratio against the same workflow on a
no-op store, measured in one run with the same workers, batches interleaved.

The DAG: start (sync) -> gather_a | gather_b | gather_c (async, each a Celery task applying an
effect and writing state) -> join (sync). The no-op twin is the same spec with
`durable=False`: state kept current on the run row only, no snapshots, effects not ledgered.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from workflows.specs import Mode, StepSpec, WorkflowSpec, get_spec, register

if TYPE_CHECKING:
    from bench.harness import BenchEnv, Result
    from workflows.engine import StepContext

DURABLE = "bench_dag"
NOOP = "bench_dag_noop"


def _start(ctx: StepContext) -> dict[str, Any]:
    ctx.state.merge("conversation", {"intent": "benchmark"})
    return {"started": True}


def _gather(ctx: StepContext) -> dict[str, Any]:
    effect = ctx.effect("gathered", lambda key: {"key": key})
    ctx.state.append("workspace", "gathered", ctx.step.name)
    return {"item": ctx.step.name, "effect": effect["key"]}


def _join(ctx: StepContext) -> dict[str, Any]:
    items = [ctx.output_of(n).get("item") for n in ("gather_a", "gather_b", "gather_c")]
    return {"joined": sorted(i for i in items if i)}


def _steps() -> tuple[StepSpec, ...]:
    return (
        StepSpec("start", "Start", _start, depends_on=()),
        *(
            StepSpec(n, n, _gather, depends_on=("start",), mode=Mode.ASYNC)
            for n in ("gather_a", "gather_b", "gather_c")
        ),
        StepSpec("join", "Join", _join, depends_on=("gather_a", "gather_b", "gather_c")),
    )


def _register() -> None:
    for name, durable in ((DURABLE, True), (NOOP, False)):
        try:
            get_spec(name)
        except LookupError:
            register(
                WorkflowSpec(
                    name=name,
                    version=1,
                    title=name,
                    agent="triage-agent",
                    steps=_steps(),
                    durable=durable,
                )
            )


_register()


def _batch(workflow: str, n: int) -> float:
    """Start n runs, wait for all to succeed; runs per second from first start to last finish."""
    from django.db.models import Max

    from bench.harness import BenchEnv as Env
    from workflows.actions import start_run
    from workflows.models import RunStatus, WorkflowRun

    WorkflowRun.objects.filter(workflow=workflow).delete()
    started = time.time()
    for _ in range(n):
        start_run(workflow=workflow, input={})

    def done() -> bool:
        failed = WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.FAILED).first()
        if failed is not None:
            raise RuntimeError(f"{workflow} run failed: {failed.error}")
        return (
            WorkflowRun.objects.filter(workflow=workflow, status=RunStatus.SUCCEEDED).count() >= n
        )

    Env.wait_until(done, timeout=600, interval=0.05)
    last = WorkflowRun.objects.filter(workflow=workflow).aggregate(m=Max("finished_at"))["m"]
    return n / max(last.timestamp() - started, 1e-6)


def _costs(workflow: str) -> tuple[float, float, float]:
    """Queries, write commits and task sends for one run, counted inline in this process."""
    from bench.harness import count_costs, inline_engine
    from workflows.actions import start_run

    runs = 5
    # inline_engine first: count_costs then wraps its send, so task sends are counted too.
    with inline_engine() as drain, count_costs() as costs:
        for _ in range(runs):
            start_run(workflow=workflow, input={})
            drain()
    return costs.queries / runs, costs.commits / runs, costs.tasks / runs


def run(env: BenchEnv) -> list[Result]:
    from bench.harness import CELERY_THROUGHPUT, Result

    env.reset()
    modules = [m for m in os.environ.get("WORKFLOW_MODULES", "").split(",") if m]
    if "bench.bench_engine" not in modules:
        # The workers must know the benchmark's workflows.
        os.environ["WORKFLOW_MODULES"] = ",".join([*modules, "bench.bench_engine"])
    n = env.scale(200, 10)
    durable_rates, noop_rates = [], []
    with env.workers():
        _batch(DURABLE, env.scale(20, 3))  # warm the workers' imports and connections
        for _ in range(2):
            durable_rates.append(_batch(DURABLE, n))
            noop_rates.append(_batch(NOOP, n))
    durable = sum(durable_rates) / len(durable_rates)
    noop = sum(noop_rates) / len(noop_rates)
    q_d, c_d, t_d = _costs(DURABLE)
    q_n, c_n, t_n = _costs(NOOP)
    return [
        Result(
            "dag_5_steps_3_parallel_runs_per_s",
            round(durable, 1),
            "runs/s",
            notes=f"{n} runs a batch, {env.process_count} worker processes; "
            f"{q_d:.0f} queries, {c_d:.0f} write commits, {t_d:.0f} task sends per run",
            limit=CELERY_THROUGHPUT,
        ),
        Result(
            "dag_5_steps_noop_store_runs_per_s",
            round(noop, 1),
            "runs/s",
            notes=f"same DAG, no snapshots or ledger; {q_n:.0f} queries, "
            f"{c_n:.0f} write commits, {t_n:.0f} task sends per run",
            limit=CELERY_THROUGHPUT,
        ),
        Result(
            "durability_overhead_ratio",
            round(noop / durable, 3),
            "x",
            better="lower",
            notes="no-op store runs/s over durable runs/s, batches interleaved in one run "
            "(1.0 = durability is free)",
        ),
    ]
