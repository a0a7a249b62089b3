"""The threshold recommender: from what people decided, the lowest confidence bar that keeps
the error rate of what would run alone under a target — with a stated statistical
confidence, not a point estimate.

An agent's action counts as an error when a person rejected it, answered instead of running
it, or approved it only after editing it (as proposed it was wrong). Approved unedited is
correct. Expired escalations decided by the system carry no human judgement and are left out.

For each candidate threshold t the actions with confidence >= t are the ones a bar of t
would have let run alone; with k errors among n, the one-sided Clopper-Pearson upper bound
of the error rate at level 1 - alpha is the (1 - alpha) quantile of Beta(k + 1, n - k). The
recommendation is the lowest t whose bound is within the target.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from workflows.models import Action

from .models import Decision, Verdict, Via

MIN_DECISIONS = 30
CANDIDATES = tuple(round(i / 100, 2) for i in range(101))


# --- the beta distribution, standard library only ---------------------------------------------


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if a <= 0 or b <= 0:
        raise ValueError("beta parameters must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q quantile of Beta(a, b): Newton's method on the CDF (the density is its
    derivative), kept inside a shrinking bisection bracket so it always converges — a few
    CDF evaluations instead of the forty a plain bisection needs."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    lo, hi = 0.0, 1.0
    x = min(max(a / (a + b), 1e-9), 1 - 1e-9)
    for _ in range(200):
        f = beta_cdf(x, a, b) - q
        if f < 0:
            lo = x
        else:
            hi = x
        if abs(f) < 1e-13 or hi - lo < 1e-12:
            break
        density = math.exp(log_norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x))
        step = x - f / density if density > 0 else lo
        # A step outside the bracket (far from the root, or flat density) bisects instead.
        x = step if lo < step < hi else (lo + hi) / 2
    return x


def clopper_pearson_upper(errors: int, n: int, level: float = 0.95) -> float:
    """One-sided upper confidence bound at `level` on a binomial proportion."""
    if n <= 0 or errors >= n:
        return 1.0
    return beta_ppf(level, errors + 1, n - errors)


# --- recommendations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    confidence: float
    error: bool


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    alone: int
    errors: int
    upper_bound: float
    share_alone: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.alone if self.alone else 0.0


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    decided: int
    approved: int
    mean_confidence: float | None

    @property
    def approval_rate(self) -> float | None:
        return self.approved / self.decided if self.decided else None

    @property
    def label(self) -> str:
        return f"{self.low:.1f} to {self.high:.1f}"


@dataclass(frozen=True)
class Recommendation:
    action_type: str
    target: float
    level: float
    decided: int
    errors: int
    threshold: float | None
    upper_bound: float | None
    share_alone: float | None
    rows: list[ThresholdRow]
    calibration: list[CalibrationBin]
    note: str

    @property
    def shown_rows(self) -> list[ThresholdRow]:
        """Around the recommended bar, or every tenth when there is none."""
        if self.threshold is None:
            return [r for r in self.rows if round(r.threshold * 100) % 10 == 0]
        return [r for r in self.rows if abs(r.threshold - self.threshold) <= 0.055]

    @property
    def statement(self) -> str:
        if self.threshold is None or self.upper_bound is None or self.share_alone is None:
            return self.note
        return (
            f"act alone at confidence >= {self.threshold:.2f}: at most "
            f"{self.upper_bound:.2%} of those actions would be wrong "
            f"({self.level:.0%} one-sided Clopper-Pearson bound, target {self.target:.1%}); "
            f"about {self.share_alone:.0%} of {self.action_type} actions would run alone"
        )


def calibration_table(observations: Iterable[Observation], bins: int = 10) -> list[CalibrationBin]:
    buckets: list[list[Observation]] = [[] for _ in range(bins)]
    for o in observations:
        index = min(int(o.confidence * bins), bins - 1) if o.confidence > 0 else 0
        buckets[index].append(o)
    return [
        CalibrationBin(
            low=i / bins,
            high=(i + 1) / bins,
            decided=len(b),
            approved=sum(1 for o in b if not o.error),
            mean_confidence=sum(o.confidence for o in b) / len(b) if b else None,
        )
        for i, b in enumerate(buckets)
    ]


def recommend(
    action_type: str,
    observations: Sequence[Observation],
    *,
    all_confidences: Sequence[float] | None = None,
    target: float = 0.01,
    level: float = 0.95,
    min_decisions: int = MIN_DECISIONS,
) -> Recommendation:
    """The lowest threshold whose upper bound on the error rate of what runs alone is within
    `target`. `all_confidences` (every recorded action of the type, decided by a person or
    not) gives the share that would run alone; without it the decided ones stand in."""
    if not 0 < target < 1 or not 0 < level < 1:
        raise ValueError("target and level must be between 0 and 1")
    population = list(all_confidences) if all_confidences is not None else None
    if not population:
        population = [o.confidence for o in observations]
    errors_total = sum(1 for o in observations if o.error)
    calibration = calibration_table(observations)
    if len(observations) < min_decisions:
        return Recommendation(
            action_type=action_type,
            target=target,
            level=level,
            decided=len(observations),
            errors=errors_total,
            threshold=None,
            upper_bound=None,
            share_alone=None,
            rows=[],
            calibration=calibration,
            note=f"not enough evidence: {len(observations)} decided {action_type} actions, "
            f"at least {min_decisions} needed",
        )
    rows: list[ThresholdRow] = []
    best: ThresholdRow | None = None
    # One sort, then every candidate's counts by binary search: O(n log n), not O(n x 101).
    ranked = sorted(observations, key=lambda o: o.confidence)
    confidences = [o.confidence for o in ranked]
    errors_at_or_above = list(accumulate((o.error for o in reversed(ranked)), initial=0))[::-1]
    population_sorted = sorted(population)
    for t in CANDIDATES:
        first = bisect_left(confidences, t - 1e-9)
        alone = len(ranked) - first
        errors = errors_at_or_above[first]
        bound = clopper_pearson_upper(errors, alone, level)
        share = (len(population_sorted) - bisect_left(population_sorted, t - 1e-9)) / len(
            population_sorted
        )
        row = ThresholdRow(
            threshold=t, alone=alone, errors=errors, upper_bound=bound, share_alone=share
        )
        rows.append(row)
        if best is None and alone and bound <= target:
            best = row
    note = (
        ""
        if best
        else (
            f"no threshold keeps the error bound within {target:.1%} on this evidence; "
            "keep these actions in review or gather more decisions"
        )
    )
    return Recommendation(
        action_type=action_type,
        target=target,
        level=level,
        decided=len(observations),
        errors=errors_total,
        threshold=best.threshold if best else None,
        upper_bound=best.upper_bound if best else None,
        share_alone=best.share_alone if best else None,
        rows=rows,
        calibration=calibration,
        note=note,
    )


def observations_for(action_type: str, *, limit: int = 5000) -> list[Observation]:
    """The latest human verdicts on `action_type`, newest first."""
    rows = (
        Decision.objects.filter(escalation__action__action_type=action_type)
        .exclude(via=Via.SYSTEM)
        .order_by("-created_at")
        .values_list("escalation__action__confidence", "verdict", "edited_payload")[:limit]
    )
    return [
        Observation(
            confidence=float(confidence),
            error=verdict != Verdict.APPROVE or edited is not None,
        )
        for confidence, verdict, edited in rows
    ]


def recommend_for(
    action_type: str, *, target: float = 0.01, level: float = 0.95, limit: int = 5000
) -> Recommendation:
    population = list(
        Action.objects.filter(action_type=action_type)
        .order_by("-created_at")
        .values_list("confidence", flat=True)[:limit]
    )
    return recommend(
        action_type,
        observations_for(action_type, limit=limit),
        all_confidences=[float(c) for c in population],
        target=target,
        level=level,
    )
