"""manage.py calibration_sim: how well autonomy stays calibrated, on synthetic agents through
the real policy, escalation and decision path (api/calibration_sim.py)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection

from api.calibration_sim import (
    DEFAULT_AGENTS,
    METHODS,
    Config,
    Simulation,
    method_comparison,
    tradeoff_config,
)
from review.metrics import drift


@contextmanager
def throwaway_database() -> Iterator[None]:
    """A fresh, migrated database on the same server (or SQLite file), dropped afterwards."""
    old_name = settings.DATABASES["default"]["NAME"]
    test = settings.DATABASES["default"].setdefault("TEST", {})
    test["NAME"] = f"{old_name}_calibration_sim" if connection.vendor != "sqlite" else None
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # A simulation's commits need not survive a crash of the server.
                cursor.execute("SET synchronous_commit TO off")
        yield
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


class Command(BaseCommand):
    help = "Simulate miscalibrated and drifting agents through the real path; print the figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--warmup", type=int, default=1500, help="actions per agent")
        parser.add_argument("--actions", type=int, default=4000, help="actions per agent after")
        parser.add_argument("--audit-rate", type=float, default=0.02)
        parser.add_argument("--method", choices=METHODS, default="joint")
        parser.add_argument(
            "--drift-after",
            type=int,
            default=1500,
            help="the drifting agent's error triples after this many of its own actions",
        )
        parser.add_argument(
            "--tradeoff-rates",
            default="0.01,0.02,0.05,0.10",
            help="audit rates for the trade-off table (comma-separated; empty: skip it)",
        )
        parser.add_argument(
            "--tradeoff-only", action="store_true", help="only the audit-rate trade-off table"
        )
        parser.add_argument("--json", default="", help="also write the figures here")
        parser.add_argument(
            "--database",
            choices=["sqlite", "current"],
            default="sqlite",
            help="sqlite: a throwaway in-memory SQLite database (the embedded mode's engine); "
            "current: a throwaway database on the configured server (slower: every query is "
            "a round trip)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["database"] == "sqlite" and connection.vendor != "sqlite":
            # Settings pick the engine at start-up: start again in embedded mode.
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606 (itself again)

        def out(text: str) -> None:
            self.stdout.write(text)
            self.stdout.flush()

        agents = tuple(
            replace(a, drift_after=options["drift_after"]) if a.drift_after is not None else a
            for a in DEFAULT_AGENTS
        )
        config = Config(
            warmup=options["warmup"],
            actions=options["actions"],
            audit_rate=options["audit_rate"],
            method=options["method"],
            seed=options["seed"],
            agents=agents,
        )
        out(
            f"calibration_sim: {len(config.agents)} agents, {config.warmup} warm-up (all "
            f"reviewed) + {config.actions} actions each, audit rate {config.audit_rate:.0%}, "
            f"recommender '{config.method}', drift x{agents[3].drift_factor:g} after "
            f"{options['drift_after']}, drift test CUSUM odds x{drift.ODDS_RATIO} "
            f"h={drift.THRESHOLD:g} (+ ln(judged share / {drift.JUDGED_SHARE:.0%}) above it)"
        )
        with throwaway_database():
            self._run(config, options, out)

    def _run(self, config: Config, options: dict[str, Any], out: Any) -> None:
        report: dict[str, Any] = {}
        if not options["tradeoff_only"]:
            self._main(config, out, report)
        self._tradeoff(config, options, out, report)
        if options["json"]:
            with open(options["json"], "w") as fh:
                json.dump(report, fh, indent=2, default=str)

    def _main(self, config: Config, out: Any, report: dict[str, Any]) -> None:
        result = Simulation(config, log=out).run()
        report["seconds"] = result["seconds"]
        out(
            "\nper action type (evaluation phase, recommended bars applied, before any drift; "
            "error: realised / true mean of what ran alone):"
        )
        out(
            f"{'action type':<14} {'actions':>7} {'autonomy':>9} {'auto err':>15} {'target':>7} "
            f"{'oracle@err':>10} {'ratio':>6} {'decided':>7} {'audits':>6}  bars"
        )
        report["per_type"] = []
        for row in result["per_type"]:
            ratio = row["autonomy"] / row["oracle_autonomy"] if row["oracle_autonomy"] else None
            bars = ", ".join(
                f"{n.removeprefix('sim-')}={b:.2f}" if b is not None else f"{n}=review"
                for n, b in row["bars"].items()
            )
            err = f"{_pct(row['error'])} / {_pct(row['expected_error'])}"
            out(
                f"{row['action_type']:<14} {row['actions']:>7} {_pct(row['autonomy']):>9} "
                f"{err:>15} {_pct(row['target']):>7} "
                f"{_pct(row['oracle_autonomy']):>10} {_pct(ratio):>6} "
                f"{row['decisions']:>7} {row['audits']:>6}  {bars}"
            )
            report["per_type"].append({**row, "ratio": ratio})

        out("\ndrift (actions of its type from the drift's start to the alert):")
        for name, delay in result["detected"].items():
            effect = result["drifting"][name]
            out(
                f"  {name}: {delay if delay is not None else 'not detected'} "
                f"(its true autonomous error {_pct(effect['before'])} -> {_pct(effect['after'])})"
            )
        report["detected"] = result["detected"]
        report["drifting"] = result["drifting"]
        per_10k = len(result["false_alerts"]) / max(result["no_drift_actions"], 1) * 10_000
        out(
            f"false alerts: {len(result['false_alerts'])} over {result['no_drift_actions']} "
            f"actions without drift ({per_10k:.2f} per 10,000) {result['false_alerts']}"
        )
        report["false_alerts"] = result["false_alerts"]
        report["no_drift_actions"] = result["no_drift_actions"]

        out(
            "\nrecommender methods on the same warm-up evidence, scored on the true curves "
            f"({config.score_sample:,} fresh actions per agent):"
        )
        out(
            f"{'action type':<14} {'method':<10} {'autonomy':>9} {'true err':>9} "
            f"{'target':>7} {'oracle@err':>10} {'ratio':>6}  bars"
        )
        comparison = method_comparison(result, config)
        for row in comparison:
            bars = ", ".join(
                f"{n.removeprefix('sim-')}={b:.2f}" if b is not None else f"{n}=review"
                for n, b in row["bars"].items()
            )
            out(
                f"{row['action_type']:<14} {row['method']:<10} {_pct(row['autonomy']):>9} "
                f"{_pct(row['error']):>9} {_pct(row['target']):>7} "
                f"{_pct(row['oracle_autonomy']):>10} {_pct(row['ratio']):>6}  {bars}"
            )
        report["methods"] = comparison
        out(f"(main run {result['seconds']} s)")

    def _tradeoff(
        self, config: Config, options: dict[str, Any], out: Any, report: dict[str, Any]
    ) -> None:
        rates = [float(r) for r in options["tradeoff_rates"].split(",") if r.strip()]
        if not rates:
            return
        spec = next(a for a in config.agents if a.drift_after is not None)
        out(
            f"\naudit rate trade-off ({spec.action_type} agents only, {spec.name}'s error "
            f"x{spec.drift_factor:g} after {spec.drift_after} of its actions, run 2,000 "
            f"{spec.action_type} actions past it):"
        )
        out(
            f"{'audit rate':>10} {'detected after':>14} {'decisions/1k':>12} {'audits/1k':>9} "
            f"{'false alerts':>12} {'seconds':>7}"
        )
        report["tradeoff"] = []
        for rate in rates:
            sim = Simulation(tradeoff_config(config, rate)).run()
            tallies = list(sim["before"].values()) + list(sim["after"].values())
            n = sum(t.actions for t in tallies)
            decisions = sum(t.decisions for t in tallies)
            audits = sum(t.audits for t in tallies)
            delay = sim["detected"][spec.name]
            out(
                f"{rate:>10.0%} {delay if delay is not None else 'none':>14} "
                f"{decisions / n * 1000:>12.0f} {audits / n * 1000:>9.1f} "
                f"{len(sim['false_alerts']):>12} {sim['seconds']:>7}"
            )
            report["tradeoff"].append(
                {
                    "rate": rate,
                    "detected_after": delay,
                    "decisions_per_1k": decisions / n * 1000,
                    "audits_per_1k": audits / n * 1000,
                    "false_alerts": sim["false_alerts"],
                }
            )
