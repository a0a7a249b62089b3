"""Calibration: stated confidence against how often people approved, per action type."""

from __future__ import annotations

from typing import Any

from .scope import APPROVED, BINS, Scope, rate, wilson


def calibration(scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """Per action type, confidence bins against how often people approved unchanged."""
    out: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, list[list[int]]] = {}
    for c in scope.decision_counts():
        bins = counts.setdefault(c.action_type, [[0, 0] for _ in range(BINS)])
        bins[c.bin][0] += c.n if c.kind == APPROVED else 0
        bins[c.bin][1] += c.n
    for kind, bins in sorted(counts.items()):
        out[kind] = [
            {
                "low": i / BINS,
                "high": (i + 1) / BINS,
                "n": n,
                "approved": a,
                "rate": rate(a, n),
                "interval": wilson(a, n),
            }
            for i, (a, n) in enumerate(bins)
        ]
    return out
