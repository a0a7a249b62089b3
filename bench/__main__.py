"""`make bench`: run every bench module (or those named), repeat, print medians, write JSON.

The machine's limits (bench_limits) always run first, in the same run, so every figure can be
read against them; the table shows each bounded figure as a ratio to its limit.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.harness import (
    CELERY_RTT,
    CELERY_THROUGHPUT,
    PG_COMMITS,
    PG_QUERIES,
    REDIS_RTT,
    ROOT,
    BenchEnv,
    Figure,
    configure_environment,
    load_average,
    recreate_database,
)

# Limits for figures whose module does not name one (Result.limit wins), by fnmatch pattern:
# what one unit of the work cannot go faster than.
DEFAULT_LIMITS = {
    # one cached-stamp query per evaluation
    "policy.eval_p[0-9][0-9]_*": PG_QUERIES,
    # a signed click is one decision transaction
    "slack.slack_interaction_p[0-9][0-9]": PG_COMMITS,
    # a click resumes the run through a Celery hop
    "slack.slack_click_to_resumed_p[0-9][0-9]": CELERY_RTT,
    # a page is a handful of queries
    "review.queue_*_p[0-9][0-9]": PG_QUERIES,
    # a commit reaches the socket through the Redis channel layer
    "review.push_p[0-9][0-9]": REDIS_RTT,
    # a run is a chain of Celery tasks
    "engine.*_runs_per_s": CELERY_THROUGHPUT,
    # an API submission is a policy evaluation and a commit
    "api.submit_*_per_s": PG_COMMITS,
    "api.*_p[0-9][0-9]": PG_QUERIES,
    # a dashboard is a few dozen small queries over the rollups
    "metrics.dashboard_1m_p[0-9][0-9]": PG_QUERIES,
}


def limit_for(fig: Figure) -> str:
    if fig.limit:
        return fig.limit
    for pattern, limit in DEFAULT_LIMITS.items():
        if fnmatch.fnmatch(fig.name, pattern):
            return limit
    return ""


def run_modules(
    modules: Sequence[tuple[str, ModuleType]],
    *,
    repeat: int,
    env: BenchEnv,
    after_each: Callable[[dict[str, Figure], list[str]], object] | None = None,
) -> tuple[dict[str, Figure], list[str]]:
    """Each module `repeat` times on a freshly reset database; every figure's values.
    `after_each` sees the figures so far after every module (partial results survive a
    run that is stopped)."""
    figures: dict[str, Figure] = {}
    failures: list[str] = []
    for name, module in modules:
        # A module may ask for fewer repetitions (a long soak says more once than thrice).
        reps = min(repeat, getattr(module, "REPEAT", repeat))
        for rep in range(reps):
            print(f"[{name}] repetition {rep + 1}/{reps}  (load {_load()})", flush=True)
            env.reset()
            started = time.monotonic()
            try:
                results = module.run(env)
            except Exception:
                failures.append(name)
                traceback.print_exc()
                break
            print(f"[{name}] {time.monotonic() - started:.1f} s", flush=True)
            for r in results:
                key = f"{name}.{r.name}"
                fig = figures.setdefault(
                    key,
                    Figure(
                        name=key,
                        unit=r.unit,
                        target=r.target,
                        better=r.better,
                        notes=r.notes,
                        limit=r.limit,
                    ),
                )
                fig.values.append(r.value)
        for fig in figures.values():
            fig.limit = limit_for(fig)
        if after_each is not None:
            after_each(figures, failures)
    return figures, failures


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in load_average())


def limit_rate(figures: dict[str, Figure], limit: str) -> float | None:
    fig = figures.get(f"limits.{limit}")
    return fig.median if fig is not None and fig.values else None


def describe_ratio(fig: Figure, figures: dict[str, Figure]) -> str:
    if not fig.limit:
        return ""
    ratio = fig.ratio(limit_rate(figures, fig.limit))
    if ratio is None:
        return f"(no limits.{fig.limit} measured)"
    short = fig.limit.removesuffix("_per_s")
    if fig.unit == "ms":
        return f"{ratio:.1f}x one {short}"
    return f"{ratio:.1%} of {short}"


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(figures: dict[str, Figure]) -> str:
    rows = []
    for fig in figures.values():
        spread = (
            (max(fig.values) - min(fig.values)) / abs(fig.median)
            if len(fig.values) > 1 and fig.median
            else 0.0
        )
        met = fig.met()
        rows.append(
            (
                fig.name,
                _fmt(fig.median),
                fig.unit,
                str(len(fig.values)),
                f"±{spread / 2:.0%}" if len(fig.values) > 1 else "",
                describe_ratio(fig, figures),
                fig.target,
                "" if met is None else ("met" if met else "NOT MET"),
            )
        )
    header = ("figure", "median", "unit", "n", "spread", "vs machine limit", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def figure_json(fig: Figure, figures: dict[str, Figure]) -> dict[str, Any]:
    rate = limit_rate(figures, fig.limit) if fig.limit else None
    return {
        "median": fig.median,
        "values": fig.values,
        "unit": fig.unit,
        "target": fig.target,
        "target_met": fig.met(),
        "better": fig.better,
        "notes": fig.notes,
        "limit": f"limits.{fig.limit}" if fig.limit else None,
        "ratio_to_limit": fig.ratio(rate),
    }


def machine(env: BenchEnv, load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": env.n_workers,
        "concurrency": env.concurrency,
        "load_before": list(load_before),
        "load_after": list(load_average()),
    }


def write_results(prefix: str, out: dict[str, Any], table: str) -> Path:
    """bench/results/<prefix><stamp>.json (+ .txt: the table) and <prefix>latest.*."""
    results_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "bench" / "results")
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = out["when"]
    for stem in (f"{prefix}{stamp}", f"{prefix}latest"):
        (results_dir / f"{stem}.json").write_text(json.dumps(out, indent=2))
        (results_dir / f"{stem}.txt").write_text(table + "\n")
    return results_dir / f"{prefix}{stamp}.json"


def setup(argv: Sequence[str] | None, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="celery worker processes (default BENCH_WORKERS or 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="prefork children per worker (default BENCH_CONCURRENCY or 2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny N: check the harness runs (a smoke test), not a measurement",
    )
    return parser


def prepare(args: argparse.Namespace) -> BenchEnv:
    """Environment, a fresh database, migrations; the env benchmarks get."""
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    configure_environment()
    recreate_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return BenchEnv(n_workers=args.workers, concurrency=args.concurrency)


def main(argv: Sequence[str] | None = None) -> int:
    parser = setup(argv, "python -m bench", "Caliber's benchmarks against the machine's limits")
    parser.add_argument("names", nargs="*", help="bench modules to run, e.g. e2e policy")
    args = parser.parse_args(argv)

    available = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))
    names = args.names or available
    unknown = set(names) - set(available)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {available}")
    # The machine's limits come first, always, so every figure can be read against them.
    names = ["limits", *[n for n in names if n != "limits"]]

    load_before = load_average()
    env = prepare(args)
    print(
        f"workers: {env.n_workers} x {env.concurrency} prefork; load {_load()}; "
        f"repeat {args.repeat}" + (" (QUICK: not a measurement)" if args.quick else ""),
        flush=True,
    )
    modules = [(n, importlib.import_module(f"bench.bench_{n}")) for n in names]
    when = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    def save(figures: dict[str, Figure], failures: list[str], *, partial: bool) -> Path:
        out = {
            "when": when,
            "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": bool(args.quick),
            "partial": partial,
            "machine": machine(env, load_before),
            "repeat": args.repeat,
            "figures": {f.name: figure_json(f, figures) for f in figures.values()},
            "failed": failures,
        }
        return write_results("", out, render_table(figures))

    figures, failures = run_modules(
        modules,
        repeat=args.repeat,
        env=env,
        after_each=lambda figs, fails: save(figs, fails, partial=True),
    )
    table = render_table(figures)
    print()
    print(table)
    path = save(figures, failures, partial=False)
    print(
        f"\nload before {' '.join(f'{x:.2f}' for x in load_before)}, after {_load()}; "
        f"written {path}" + (f"; FAILED: {failures}" if failures else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
