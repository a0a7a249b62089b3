"""`make bench`: run every bench module (or those named), repeat, print medians, write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime

from bench.harness import ROOT, Figure, configure_environment, recreate_database


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="bench modules to run, e.g. e2e policy")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    available = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))
    names = args.names or available
    unknown = set(names) - set(available)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {available}")
    # The machine's limits come first so every figure can be read against them.
    if "limits" in names:
        names = ["limits", *[n for n in names if n != "limits"]]

    configure_environment()
    recreate_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from bench.harness import BenchEnv

    env = BenchEnv()
    figures: dict[str, Figure] = {}
    failures: list[str] = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        for rep in range(args.repeat):
            print(f"[{name}] repetition {rep + 1}/{args.repeat}", flush=True)
            env.reset()
            try:
                results = module.run(env)
            except Exception:
                failures.append(name)
                traceback.print_exc()
                break
            for r in results:
                fig = figures.setdefault(
                    f"{name}.{r.name}",
                    Figure(
                        name=f"{name}.{r.name}",
                        unit=r.unit,
                        target=r.target,
                        better=r.better,
                        notes=r.notes,
                    ),
                )
                fig.values.append(r.value)

    width = max((len(n) for n in figures), default=10)
    print()
    print(f"{'figure':<{width}}  {'median':>12}  {'unit':<10} {'n':>2}  target")
    for fig in figures.values():
        print(
            f"{fig.name:<{width}}  {fig.median:>12.2f}  {fig.unit:<10} {len(fig.values):>2}  "
            f"{fig.target}"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {
        "when": stamp,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "repeat": args.repeat,
        "figures": {
            f.name: {
                "median": f.median,
                "values": f.values,
                "unit": f.unit,
                "target": f.target,
                "better": f.better,
                "notes": f.notes,
            }
            for f in figures.values()
        },
        "failed": failures,
    }
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    for path in (results_dir / f"{stamp}.json", results_dir / "latest.json"):
        path.write_text(json.dumps(out, indent=2))
    print(f"\nwritten bench/results/{stamp}.json" + (f"; FAILED: {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
