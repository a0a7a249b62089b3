"""Audit sampling: which actions allowed to run alone a person is asked to judge.

The draw comes from one process-wide RNG that tests and the calibration simulation replace
with a seeded one (`use_rng`), so every sample is reproducible. What is drawn is stored on
the action (`audit_probability`, `audit_sampled`): the recommender weights each audited
action by the inverse of the probability it had, whatever the rate is by then.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from workflows.models import PolicyOutcome

from .policy import PolicyDecision

_lock = threading.Lock()
_rng: random.Random = random.SystemRandom()


@contextmanager
def use_rng(rng: random.Random) -> Iterator[random.Random]:
    """Draw audit samples from `rng` inside the block (tests, the simulation)."""
    global _rng
    with _lock:
        previous, _rng = _rng, rng
    try:
        yield rng
    finally:
        with _lock:
            _rng = previous


@dataclass(frozen=True)
class AuditDraw:
    probability: float | None
    sampled: bool

    @property
    def fields(self) -> dict[str, object]:
        return {"audit_probability": self.probability, "audit_sampled": self.sampled}


NOT_ELIGIBLE = AuditDraw(probability=None, sampled=False)


def draw(decision: PolicyDecision) -> AuditDraw:
    """For an action about to be recorded: its chance of an audit, and whether it won it.
    Only actions allowed to run alone are eligible."""
    if decision.outcome != PolicyOutcome.AUTO:
        return NOT_ELIGIBLE
    p = min(max(decision.audit_rate, 0.0), 1.0)
    if p <= 0.0:
        return AuditDraw(probability=0.0, sampled=False)
    with _lock:
        u = _rng.random()
    return AuditDraw(probability=p, sampled=u < p)
