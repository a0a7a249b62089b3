"""`make bench-peers`: Caliber and LangGraph, the same human-approval workload, side by side.

Same machine, same run, same PostgreSQL database; the machine's limits measured first, in
the same run. Prints the usual table, then the side-by-side one with ratios; writes
bench/results/peers-<stamp>.json (+ .txt).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench.harness import Figure, load_average

TARGET_RATIO = 2.0


def _need_langgraph() -> None:
    try:
        importlib.import_module("langgraph.checkpoint.postgres")
    except ImportError:
        sys.exit(
            "LangGraph is an optional extra: .venv/bin/pip install -e '.[peers]' "
            "(make bench-peers does it)"
        )


def side_by_side(figures: dict[str, Figure]) -> tuple[str, dict[str, Any]]:
    """One row per workload and measure; Caliber against each LangGraph mode."""
    order = ("langgraph_async", "langgraph_sync", "langgraph_exit")
    seen = {name.split(".")[1] for name in figures if name.startswith("side_by_side.langgraph_")}
    systems = [s for s in order if s in seen] + sorted(seen - set(order))
    durable = [s for s in systems if s.removeprefix("langgraph_") in ("async", "sync")]
    rows: list[list[str]] = []
    verdicts: dict[str, Any] = {}
    measures = [
        ("approval_per_s", "approval round trips/s"),
        ("approval_start_to_paused_per_s", "  phase 1: started -> paused, runs/s"),
        ("approval_xacts_per_run", "  transactions per approval run"),
        ("approval_rows_written_per_run", "  rows written per approval run"),
        ("approval_cpu_ms_per_run", "  machine CPU ms per approval run"),
        ("approval_own_cpu_ms_per_run", "  own CPU ms per approval run (bench/own_cpu.py)"),
        ("approval_connections_per_run", "  connections opened per approval run"),
        ("auto_per_s", "auto runs/s"),
        ("auto_xacts_per_run", "  transactions per auto run"),
        ("auto_rows_written_per_run", "  rows written per auto run"),
        ("auto_cpu_ms_per_run", "  machine CPU ms per auto run"),
        ("auto_own_cpu_ms_per_run", "  own CPU ms per auto run (bench/own_cpu.py)"),
        ("auto_connections_per_run", "  connections opened per auto run"),
    ]

    def med(system: str, measure: str) -> float | None:
        fig = figures.get(f"side_by_side.{system}.{measure}")
        return fig.median if fig is not None and fig.values else None

    header = ["", "caliber", *systems, *[f"caliber / {s}" for s in systems]]
    for measure, label in measures:
        ours = med("caliber", measure)
        theirs = [med(s, measure) for s in systems]
        cells = [label, _fmt(ours), *[_fmt(t) for t in theirs]]
        for t in theirs:
            cells.append(f"{ours / t:.2f}x" if ours and t else "")
        rows.append(cells)
        if measure in ("approval_per_s", "auto_per_s") and ours:
            best = max(
                (t for s, t in zip(systems, theirs, strict=True) if s in durable and t),
                default=None,
            )
            if best:
                ratio = ours / best
                verdicts[measure] = {
                    "caliber": ours,
                    "best_durable_langgraph": best,
                    "ratio": ratio,
                    "target": f">= {TARGET_RATIO:g}x",
                    "met": ratio >= TARGET_RATIO,
                }
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    cores = os.cpu_count() or 1
    for measure, v in verdicts.items():
        lines.append(
            f"{measure}: caliber {v['caliber']:.1f} vs best durable LangGraph "
            f"{v['best_durable_langgraph']:.1f} = {v['ratio']:.2f}x "
            f"(target {v['target']}: {'met' if v['met'] else 'NOT MET'})"
        )
        # What the target asks of the CPU: the machine's cores spent on nothing else.
        path = measure.removesuffix("_per_s")
        cpu = med("caliber", f"{path}_cpu_ms_per_run")
        peer_cpu = [c for s in durable if (c := med(s, f"{path}_cpu_ms_per_run")) is not None]
        if cpu:
            budget = cores * 1000 / (TARGET_RATIO * v["best_durable_langgraph"])
            v["cpu_ms_per_run"] = cpu
            v["cpu_budget_ms_per_run"] = budget
            v["cpu_ceiling_per_s"] = cores * 1000 / cpu
            lines.append(
                f"  at {cpu:.1f} ms of machine CPU per run, {cores} cores carry at most "
                f"{cores * 1000 / cpu:.0f}/s; the target needs <= {budget:.1f} ms per run"
                + (f" (LangGraph spends {min(peer_cpu):.1f})" if peer_cpu else "")
            )
    return "\n".join(lines), verdicts


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import (
        _load,
        figure_json,
        machine,
        prepare,
        render_table,
        run_modules,
        setup,
        write_results,
    )

    parser = setup(argv, "python -m bench.peers", "Caliber vs LangGraph, side by side")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per batch (default BENCH_PEER_RUNS or 300)"
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="the batched engine's curve instead (bench/peers/curve.py): Caliber at each "
        "ENGINE_BATCH_MAX and worker count, LangGraph sync at each worker count",
    )
    parser.add_argument(
        "--curve-batches", default="1,10,100", help="ENGINE_BATCH_MAX values (default 1,10,100)"
    )
    parser.add_argument(
        "--curve-workers",
        default="1,2,4",
        help="celery worker process counts (default 1,2,4), each of --concurrency children "
        "(default 1 here)",
    )
    parser.add_argument(
        "--curve-no-peer", action="store_true", help="the curve without LangGraph's rows"
    )
    args = parser.parse_args(argv)
    if args.curve:
        return curve_main(args, argv)
    _need_langgraph()
    if args.runs:
        os.environ["BENCH_PEER_RUNS"] = str(args.runs)
    load_before = load_average()
    env = prepare(args)
    print(
        f"workers: {env.n_workers} x {env.concurrency} prefork = LangGraph processes: "
        f"{env.process_count}; load {_load()}; repeat {args.repeat}"
        + (" (QUICK: not a measurement)" if args.quick else ""),
        flush=True,
    )
    mods = [
        ("limits", importlib.import_module("bench.bench_limits")),
        ("side_by_side", importlib.import_module("bench.peers.bench_side_by_side")),
    ]
    figures, failures = run_modules(mods, repeat=args.repeat, env=env)
    table = render_table(figures)
    side, verdicts = side_by_side(figures)
    print()
    print(table)
    print()
    print(side)
    out = {
        "when": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "command": "python -m bench.peers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": bool(args.quick),
        "machine": machine(env, load_before),
        "repeat": args.repeat,
        "figures": {f.name: figure_json(f, figures) for f in figures.values()},
        "targets": verdicts,
        "failed": failures,
    }
    path = write_results("peers-", out, table + "\n\n" + side)
    print(
        f"\nload before {' '.join(f'{x:.2f}' for x in load_before)}, after {_load()}; "
        f"written {path.name}" + (f"; FAILED: {failures}" if failures else "")
    )
    return 1 if failures else 0


def curve_main(args: Any, argv: Sequence[str] | None) -> int:
    """`--curve`: the machine's limits once, then every point of the curve (one batch each)."""
    from bench.__main__ import (
        _load,
        figure_json,
        machine,
        prepare,
        render_table,
        run_modules,
        write_results,
    )
    from bench.peers import curve

    load_before = load_average()
    env = prepare(args)
    print(
        f"curve: B in {args.curve_batches}, worker processes in {args.curve_workers} "
        f"(x{args.concurrency or 1} prefork each); load {_load()}"
        + (" (QUICK: not a measurement)" if args.quick else ""),
        flush=True,
    )
    limits = [("limits", importlib.import_module("bench.bench_limits"))]
    figures, failures = run_modules(limits, repeat=1, env=env)
    text, points = curve.run(env, args)
    command = "python -m bench.peers " + " ".join(argv if argv is not None else sys.argv[1:])
    full = (
        f"{command}\nload before {' '.join(f'{x:.2f}' for x in load_before)}, after {_load()}"
        f"\n\n{render_table(figures)}\n\n{text}"
    )
    print()
    print(full)
    out = {
        "when": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "command": command,
        "quick": bool(args.quick),
        "machine": machine(env, load_before),
        "figures": {f.name: figure_json(f, figures) for f in figures.values()},
        "curve": curve.as_json(points),
        "failed": failures,
    }
    path = write_results("curve-", out, full)
    print(f"\nwritten {path.name}" + (f"; FAILED: {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
