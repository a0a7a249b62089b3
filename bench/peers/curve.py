"""The batched engine's curve (issue 20): runs/s and machine CPU per run of the peer workload
(approval and auto, bench.peers.caliber_flow) at each largest batch B (ENGINE_BATCH_MAX, in
every worker's environment) and each number of worker processes.

`make bench-peers BENCH_ARGS="--curve"` (= `python -m bench.peers --curve`): the machine's
limits, then for each count P of worker processes (`--curve-workers`, default 1,2,4: P
`celery worker` processes of `--concurrency` prefork children, default 1, on the bench
queue and its priority queue) and each B (`--curve-batches`, default 1,10,100), one batch of
`--runs` (150) approval runs and one of auto runs on fresh workers and a freshly reset database,
exactly as the side-by-side comparison measures Caliber (bench_side_by_side._caliber: started
and approved from P threads of the bench process). LangGraph sync at P processes, once per P,
is the yardstick (skipped without the optional extra, or with `--curve-no-peer`).

Rates move with the machine's load; the CPU per run (the whole machine's busy time over the
timed batch, /proc/stat) and the transactions per run are the steadier readings.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.harness import BenchEnv, load_average

BATCHES = (1, 10, 100)
WORKERS = (1, 2, 4)
RUNS = 150


@dataclass
class Point:
    system: str  # "caliber" or "langgraph_sync"
    path: str  # "approval" or "auto"
    workers: int
    concurrency: int
    batch_max: int | None  # ENGINE_BATCH_MAX (Caliber only)
    runs: int
    seconds: float
    runs_per_s: float
    cpu_ms_per_run: float  # the machine's (every process, /proc/stat)
    own_cpu_ms_per_run: float | None  # the bench's processes only (bench.own_cpu)
    own_cpu_split_per_run: dict[str, float] | None  # of it: bench, workers, postgres
    xacts_per_run: float
    rows_per_run: float
    load: list[float] = field(default_factory=list)


def _have_langgraph() -> bool:
    try:
        importlib.import_module("langgraph.checkpoint.postgres")
    except ImportError:
        return False
    return True


def measure(
    env: BenchEnv,
    *,
    n: int,
    batches: tuple[int, ...] = BATCHES,
    workers: tuple[int, ...] = WORKERS,
    concurrency: int = 1,
    peer: bool = True,
    log: Any = None,
) -> list[Point]:
    """Every point of the curve, in the order measured."""
    log = log or functools.partial(print, flush=True)  # make's output may go to a log
    from bench.peers import bench_side_by_side as sbs
    from bench.peers import langgraph_flow

    peer = peer and _have_langgraph()
    if peer:
        langgraph_flow.setup(sbs._conninfo())
    points: list[Point] = []
    saved = os.environ.get("ENGINE_BATCH_MAX")
    try:
        for p in workers:
            env.n_workers, env.concurrency = p, concurrency
            for b in batches:
                # The workers are started inside _caliber with this process's environment.
                os.environ["ENGINE_BATCH_MAX"] = str(b)
                for path in ("approval", "auto"):
                    total, _, work = sbs._caliber(env, n=n, approval=path == "approval")
                    points.append(_point("caliber", path, p, concurrency, b, n, total, work))
                    log(_line(points[-1]))
            if peer:
                for path in ("approval", "auto"):
                    total, _, work = sbs._langgraph(
                        env, n=n, approval=path == "approval", durability="sync"
                    )
                    points.append(
                        _point("langgraph_sync", path, p, concurrency, None, n, total, work)
                    )
                    log(_line(points[-1]))
    finally:
        if saved is None:
            os.environ.pop("ENGINE_BATCH_MAX", None)
        else:
            os.environ["ENGINE_BATCH_MAX"] = saved
    return points


def _point(
    system: str,
    path: str,
    workers: int,
    concurrency: int,
    batch_max: int | None,
    n: int,
    total: float,
    work: Any,
) -> Point:
    return Point(
        system=system,
        path=path,
        workers=workers,
        concurrency=concurrency,
        batch_max=batch_max,
        runs=n,
        seconds=total,
        runs_per_s=n / total,
        cpu_ms_per_run=work.cpu_ms / n,
        own_cpu_ms_per_run=work.own_cpu_ms / n if work.own_cpu_ms is not None else None,
        own_cpu_split_per_run=(
            {k: round(v / n, 2) for k, v in work.own_cpu_split.items()}
            if work.own_cpu_split is not None
            else None
        ),
        xacts_per_run=work.xacts / n,
        rows_per_run=work.rows / n,
        load=[round(x, 2) for x in load_average()],
    )


def _line(p: Point) -> str:
    b = f"B={p.batch_max}" if p.batch_max is not None else "peer"
    return (
        f"[curve] {p.system} {p.path} P={p.workers}x{p.concurrency} {b}: "
        f"{p.runs_per_s:.1f} runs/s, {p.cpu_ms_per_run:.1f} ms CPU/run"
        + (
            f" ({p.own_cpu_ms_per_run:.1f} own: {p.own_cpu_split_per_run})"
            if p.own_cpu_ms_per_run is not None
            else ""
        )
        + f", {p.xacts_per_run:.2f} xacts/run, {p.rows_per_run:.1f} rows/run "
        f"(load {' '.join(f'{x:.2f}' for x in p.load)})"
    )


def table(points: list[Point]) -> str:
    """A markdown table: one row per worker count and B, approval and auto side by side,
    LangGraph sync at the same process count below each group."""
    header = (
        "| worker processes | B | approval runs/s | approval CPU ms/run (own) "
        "| approval xacts/run | auto runs/s | auto CPU ms/run (own) | auto xacts/run "
        "| load after |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows: list[str] = []
    keys: list[tuple[str, int, int | None]] = []
    for p in points:
        key = (p.system, p.workers, p.batch_max)
        if key not in keys:
            keys.append(key)
    for system, workers, batch_max in keys:
        by_path = {
            p.path: p
            for p in points
            if (p.system, p.workers, p.batch_max) == (system, workers, batch_max)
        }
        a, u = by_path.get("approval"), by_path.get("auto")
        any_ = a or u
        concurrency = any_.concurrency if any_ is not None else 1
        label = f"{workers}" + (f" x{concurrency}" if concurrency != 1 else "")
        b = str(batch_max) if batch_max is not None else "LangGraph sync"

        def cells(p: Point | None) -> str:
            if p is None:
                return "- | - | -"
            own = f" ({p.own_cpu_ms_per_run:.1f})" if p.own_cpu_ms_per_run is not None else ""
            return f"{p.runs_per_s:.1f} | {p.cpu_ms_per_run:.1f}{own} | {p.xacts_per_run:.2f}"

        last = u or a
        load = " ".join(f"{x:.1f}" for x in last.load) if last else ""
        rows.append(f"| {label} | {b} | {cells(a)} | {cells(u)} | {load} |")
    return header + "\n" + "\n".join(rows)


def as_json(points: list[Point]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def run(env: BenchEnv, args: Any) -> tuple[str, list[Point]]:
    # 150 runs a point (not bench-peers' 300): 18 Caliber points and 6 LangGraph ones fit
    # in ~6 minutes on a loaded 2-core machine (348 s at load 2-8).
    n = env.scale(args.runs or RUNS, 4)
    started = time.monotonic()
    points = measure(
        env,
        n=n,
        batches=parse_ints(args.curve_batches),
        workers=parse_ints(args.curve_workers),
        concurrency=args.concurrency or 1,
        peer=not args.curve_no_peer,
    )
    took = time.monotonic() - started
    return table(points) + f"\n\n({n} runs per point; {took:.0f} s)", points
