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
    Config,
    Simulation,
    method_comparison,
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
        parser.add_argument("--actions", type=int, default=3000, help="actions per agent after")
        parser.add_argument("--audit-rate", type=float, default=0.02)
        parser.add_argument("--method", choices=["threshold", "isotonic"], default="isotonic")
        parser.add_argument(
            "--tradeoff-rates",
            default="0.01,0.02,0.05,0.10",
            help="audit rates for the trade-off table (comma-separated; empty: skip it)",
        )
        parser.add_argument("--json", default="", help="also write the figures here")
        parser.add_argument(
            "--drift-after",
            type=int,
            default=500,
            help="the drifting agent's curve moves after this many of its actions",
        )
        parser.add_argument(
            "--tradeoff-only", action="store_true", help="only the audit-rate trade-off table"
        )
        parser.add_argument(
            "--database",
            choices=["sqlite", "current"],
            default="sqlite",
            help="sqlite: a throwaway in-memory SQLite database (the embedded mode's engine; "
            "minutes on a busy machine); current: a throwaway database on the configured "
            "server (PostgreSQL: every query is a round trip, so much slower)",
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
            replace(a, shift_after=options["drift_after"]) if a.shift_after is not None else a
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
            f"calibration_sim: {len(config.agents)} agents, {config.warmup} warm-up + "
            f"{config.actions} actions each, audit rate {config.audit_rate:.0%}, recommender "
            f"'{config.method}', drift test CUSUM odds x{drift.ODDS_RATIO} h={drift.THRESHOLD}"
        )
        with throwaway_database():
            self._run(config, options, out)

    def _run(self, config: Config, options: dict[str, Any], out: Any) -> None:
        if options["tradeoff_only"]:
            self._tradeoff(config, options, out, {})
            return
        result = Simulation(config, log=out).run()
        report: dict[str, Any] = {"seconds": result["seconds"]}

        out("\nper action type (after the recommended bars were applied, before any drift):")
        out(
            f"{'action type':<14} {'actions':>7} {'autonomy':>9} {'auto err':>9} {'target':>7} "
            f"{'oracle@err':>10} {'ratio':>6} {'reviews+audits':>14}  bars"
        )
        report["per_type"] = []
        for row in result["per_type"]:
            ratio = row["autonomy"] / row["oracle_autonomy"] if row["oracle_autonomy"] else None
            bars = ", ".join(
                f"{n.removeprefix('sim-')}={b:.2f}" if b is not None else f"{n}=review"
                for n, b in row["bars"].items()
            )
            out(
                f"{row['action_type']:<14} {row['actions']:>7} {_pct(row['autonomy']):>9} "
                f"{_pct(row['error']):>9} {_pct(row['target']):>7} "
                f"{_pct(row['oracle_autonomy']):>10} {_pct(ratio):>6} "
                f"{row['decisions']:>14}  {bars}"
            )
            report["per_type"].append({**row, "ratio": ratio})

        out("\ndrift (the drifting agent's actions of its type from drift start to the alert):")
        for name, delay in result["detected"].items():
            out(f"  {name}: {delay if delay is not None else 'not detected'}")
        report["detected"] = result["detected"]
        per_10k = len(result["false_alerts"]) / result["no_drift_actions"] * 10_000
        out(
            f"false alerts: {len(result['false_alerts'])} over {result['no_drift_actions']} "
            f"actions without drift ({per_10k:.2f} per 10,000) {result['false_alerts']}"
        )
        report["false_alerts"] = result["false_alerts"]
        report["no_drift_actions"] = result["no_drift_actions"]

        out("\nrecommender methods on the same warm-up evidence, scored on the true curves:")
        out(
            f"{'action type':<14} {'method':<10} {'autonomy':>9} {'true err':>9} "
            f"{'target':>7} {'oracle@err':>10} {'ratio':>6}"
        )
        comparison = method_comparison(result, config)
        for row in comparison:
            out(
                f"{row['action_type']:<14} {row['method']:<10} {_pct(row['autonomy']):>9} "
                f"{_pct(row['error']):>9} {_pct(row['target']):>7} "
                f"{_pct(row['oracle_autonomy']):>10} {_pct(row['ratio']):>6}"
            )
        report["methods"] = comparison

        self._tradeoff(config, options, out, report)
        out(f"\n(main run {result['seconds']} s)")
        if options["json"]:
            with open(options["json"], "w") as fh:
                json.dump(report, fh, indent=2, default=str)

    def _tradeoff(
        self, config: Config, options: dict[str, Any], out: Any, report: dict[str, Any]
    ) -> None:
        rates = [float(r) for r in options["tradeoff_rates"].split(",") if r.strip()]
        if rates:
            out(
                "\naudit rate trade-off (the drifting agent alone, "
                f"drift after {options['drift_after']} of its actions):"
            )
            out(f"{'audit rate':>10} {'detected after':>14} {'decisions/1k':>12} {'audits/1k':>9}")
            spec = next(a for a in config.agents if a.shift_after is not None)
            report["tradeoff"] = []
            for rate in rates:
                sim = Simulation(
                    replace(
                        config,
                        audit_rate=rate,
                        agents=(spec,),
                        actions=(spec.shift_after or 0) + config.drift_horizon,
                    )
                ).run()
                tallies = list(sim["before"].values()) + list(sim["after"].values())
                n = sum(t.actions for t in tallies)
                decisions = sum(t.decisions for t in tallies)
                audits = sum(t.audits for t in tallies)
                delay = sim["detected"][spec.name]
                out(
                    f"{rate:>10.0%} {delay if delay is not None else 'none':>14} "
                    f"{decisions / n * 1000:>12.0f} {audits / n * 1000:>9.1f}"
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
