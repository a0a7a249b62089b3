"""The threshold recommender: from every judgement of an action type, the lowest confidence
bar that keeps the error rate of what would run alone under the type's target — with a
stated statistical confidence, not a point estimate.

The evidence (`evidence_for`), within an explicit time window:
- people's decisions on escalations: rejected, answered instead, or approved only after an
  edit is an error; approved unedited is correct (expired ones, decided by the system, carry
  no judgement and are left out);
- audits of actions allowed to run alone, judged the same way, each weighted by the inverse
  of the probability it had of being sampled (it stands for that many actions);
- outcomes of actions that ran alone: a bad one makes the action an error whatever its audit
  said; an unaudited one with an outcome is evidence too, good or bad, weighted by the
  inverse of the share of the type's autonomous actions that have one (it assumes whether
  an outcome gets recorded does not depend on how it went; counting only the bad ones would
  read every reported action as wrong). The outcome of an action a person approved before
  it ran is left to that person's verdict: the question is what running it without them
  changes.

Two bounds on the error of what a bar t lets run alone (`method`):
- "threshold": per candidate t, the one-sided Clopper-Pearson bound on the judged actions at
  or above t, with Kish's effective sample size when weights differ: Beta(k + 1, n - k)
  quantile. Exact for unweighted evidence.
- "isotonic": error falls as confidence rises (a monotone fit, pool-adjacent-violators, over
  0.01-wide bins), the bound is the `level` quantile over draws from each bin's Jeffreys
  posterior, refitted each time, of the population-weighted error above t. It borrows
  strength from neighbouring confidences, so it reaches a lower bar on the same evidence;
  unjudged bins take the error of the nearest judged bin below (monotone, so conservative).
- "joint" (per agent; `joint_bars`): the bars of every agent acting on a type chosen
  together, each agent's bins added surest-first by its monotone fit's error, so long as the
  same posterior bootstrap bounds the *type's* autonomous error within its target. Per-agent
  bars each held to the target on their own leave autonomy behind wherever agents differ:
  one agent's marginal actions are far worse than another's.
`manage.py calibration_sim` compares all three on the same evidence; DEFAULT_METHOD is the
one that reached the most autonomy within the target there (joint: 89-100% of the oracle's
autonomy at the same error, against 74-99% for isotonic and 75-100% for per-threshold).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Any

from django.utils import timezone

from workflows.models import Action, OutcomeQuality, PolicyOutcome
from workflows.models import Outcome as ActionOutcome
from workflows.tools import get_action_type

from .models import AgentProfile, CalibrationTarget, Decision, EscalationKind, Verdict, Via
from .policy import current_policy_set

MIN_DECISIONS = 30
CANDIDATES = tuple(round(i / 100, 2) for i in range(101))
WINDOW_DAYS = 90
# Safety net for the window (shown whenever it bites, never silent).
MAX_EVIDENCE = 200_000
# Below this much evidence of its own an agent borrows from its action type's other agents,
# scaled so that the borrowed evidence makes up the difference.
POOL_TO = 400
BOOTSTRAP_DRAWS = 300
DEFAULT_METHOD = "joint"


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


def clopper_pearson_upper(errors: float, n: float, level: float = 0.95) -> float:
    """One-sided upper confidence bound at `level` on a binomial proportion (non-integer
    counts: an effective sample of weighted evidence)."""
    if n <= 0 or errors >= n:
        return 1.0
    return beta_ppf(level, errors + 1, n - errors)


def weighted_upper(errors_w: float, total_w: float, sq_w: float, level: float) -> float:
    """Clopper-Pearson on weighted evidence via Kish's effective sample size
    n_eff = (sum w)^2 / sum w^2; with unit weights it is the exact bound."""
    if total_w <= 0 or sq_w <= 0:
        return 1.0
    n_eff = total_w * total_w / sq_w
    return clopper_pearson_upper(errors_w / total_w * n_eff, n_eff, level)


# --- recommendations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    confidence: float
    error: bool
    # How many actions this judgement stands for: 1, or 1/p for an audit sampled with p.
    weight: float = 1.0
    agent_id: int | None = None
    source: str = "review"  # review | audit | outcome


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    alone: int
    errors: int
    upper_bound: float
    share_alone: float
    weighted_error_rate: float = 0.0

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
class UnjudgedRange:
    low: float
    high: float
    actions: int

    @property
    def label(self) -> str:
        return f"{self.low:.2f} to {self.high:.2f}"


@dataclass(frozen=True)
class Target:
    target: float
    level: float
    source: str


def derived_target(action_type: str) -> Target:
    """The default target from what is at stake: reversible and internal tolerates most,
    irreversible and customer-facing least, money halves it again."""
    tool = get_action_type(action_type)
    if tool.reversible:
        target = 0.02 if tool.customer_facing else 0.05
    else:
        target = 0.01 if tool.customer_facing else 0.02
    facts = [
        "reversible" if tool.reversible else "irreversible",
        "customer-facing" if tool.customer_facing else "internal",
    ]
    if tool.amount_field is not None:
        target /= 2
        facts.append("moves money")
    return Target(target=target, level=0.95, source="derived: " + ", ".join(facts))


def target_for(action_type: str) -> Target:
    row = CalibrationTarget.objects.filter(action_type=action_type).first()
    if row is not None:
        return Target(target=row.target, level=row.level, source="set by an admin")
    return derived_target(action_type)


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
    method: str = "threshold"
    agent: str = ""
    target_source: str = ""
    window_days: int | None = None
    truncated: bool = False
    audits: int = 0
    bad_outcomes: int = 0
    outcomes: int = 0
    pooled_share: float = 0.0
    in_force: float | None = None
    unjudged: list[UnjudgedRange] = field(default_factory=list)

    @property
    def shown_rows(self) -> list[ThresholdRow]:
        """Around the recommended bar, or every tenth when there is none."""
        if self.threshold is None:
            return [r for r in self.rows if round(r.threshold * 100) % 10 == 0]
        return [r for r in self.rows if abs(r.threshold - self.threshold) <= 0.055]

    @property
    def subject(self) -> str:
        return f"{self.agent} / {self.action_type}" if self.agent else self.action_type

    @property
    def method_label(self) -> str:
        if self.method == "joint":
            return (
                f"{self.level:.0%} bound on the whole type's autonomous error, every agent's bar "
                "set together from its monotone fit"
            )
        if self.method == "isotonic":
            return f"{self.level:.0%} bound of a monotone (isotonic) fit, posterior bootstrap"
        return f"{self.level:.0%} one-sided Clopper-Pearson bound"

    @property
    def evidence_label(self) -> str:
        window = f"last {self.window_days} days" if self.window_days else "all time"
        parts = [
            f"{self.decided - self.audits - self.outcomes} decisions on escalations",
            f"{self.audits} audits",
            f"{self.outcomes} outcomes of unaudited autonomous actions "
            f"({self.bad_outcomes} judged bad)",
        ]
        text = f"evidence from the {window}: " + ", ".join(parts)
        if self.pooled_share:
            text += f"; {self.pooled_share:.0%} of its weight borrowed from other agents"
        if self.truncated:
            text += f" (cut to the newest {MAX_EVIDENCE:,} in the window)"
        return text

    @property
    def looser_than_evidence(self) -> bool:
        """The bar in force lets more run alone than the evidence supports."""
        if self.in_force is None or self.decided < MIN_DECISIONS:
            return False
        return self.threshold is None or self.in_force < self.threshold - 1e-9

    @property
    def warning(self) -> str:
        if not self.looser_than_evidence or self.in_force is None:
            return ""
        if self.threshold is None:
            return (
                f"The bar in force ({self.in_force:.2f}) lets {self.subject} act alone, but "
                f"no bar keeps the error bound within {self.target:.1%} on this evidence."
            )
        return (
            f"The bar in force ({self.in_force:.2f}) is looser than the evidence allows: "
            f"{self.threshold:.2f} is the lowest bar within {self.target:.1%}."
        )

    @property
    def statement(self) -> str:
        if self.threshold is None or self.upper_bound is None or self.share_alone is None:
            return self.note
        return (
            f"act alone at confidence >= {self.threshold:.2f}: at most "
            f"{self.upper_bound:.2%} of those actions would be wrong "
            f"({self.method_label}, target {self.target:.1%}); "
            f"about {self.share_alone:.0%} of {self.subject} actions would run alone"
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


def _bin(confidence: float) -> int:
    return min(max(int(round(confidence * 100, 6)), 0), 100)


def isotonic_decreasing(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Pool adjacent violators: the weighted least-squares fit that never rises. Bins without
    weight take the value of the nearest weighted bin before them (lower confidence: never
    optimistic), or after them at the very start."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights, strict=True):
        if w <= 0:
            blocks.append([math.nan, 0.0, 1])
            continue
        blocks.append([v, w, 1])
        # Merge while the last weighted block is above one before it (a rise): pool them.
        while True:
            weighted = [i for i, b in enumerate(blocks) if b[1] > 0]
            if len(weighted) < 2:
                break
            a, b = weighted[-2], weighted[-1]
            if blocks[b][0] <= blocks[a][0]:
                break
            wa, wb = blocks[a][1], blocks[b][1]
            merged = [(blocks[a][0] * wa + blocks[b][0] * wb) / (wa + wb), wa + wb, 0]
            merged[2] = sum(int(x[2]) for x in blocks[a:])
            del blocks[a:]
            blocks.append(merged)
    fitted: list[float] = []
    for mean, _w, count in blocks:
        fitted.extend([mean] * int(count))
    last = next((v for v in fitted if not math.isnan(v)), 1.0)
    for i, v in enumerate(fitted):
        if math.isnan(v):
            fitted[i] = last
        else:
            last = v
    return fitted


def _population_bins(population: Sequence[float]) -> list[int]:
    counts = [0] * 101
    for c in population:
        counts[_bin(c)] += 1
    return counts


def _isotonic_bounds(
    observations: Sequence[Observation], population: Sequence[float], level: float, seed: int
) -> list[tuple[float, float]]:
    """Per candidate bar: (fitted error of what would run alone, its `level` bound)."""
    import random

    n_eff, k_eff, fit = _curve(observations)
    pop = _population_bins(population)
    above = list(accumulate(reversed(pop)))[::-1]  # actions at or above each bin

    def tail_errors(fit: Sequence[float]) -> list[float]:
        sums = list(accumulate(pop[b] * fit[b] for b in reversed(range(101))))[::-1]
        return [sums[b] / above[b] if above[b] else 0.0 for b in range(101)]

    point = tail_errors(fit)
    # The fit's level sets (runs of judged bins it pooled): each one's Jeffreys posterior is
    # drawn as a whole and the draws refitted. Drawn bin by bin instead, a hundred thin bins
    # each carry half an error of prior, and the bound drowns in it.
    curves = _posterior_curves(n_eff, k_eff, fit, random.Random(seed), BOOTSTRAP_DRAWS)
    draws = [tail_errors(curve) for curve in curves]
    q = min(math.ceil(level * BOOTSTRAP_DRAWS) - 1, BOOTSTRAP_DRAWS - 1)
    bounds = []
    for b in range(101):
        column = sorted(d[b] for d in draws)
        bounds.append((point[b], column[q]))
    return bounds


def _curve(observations: Sequence[Observation]) -> tuple[list[float], list[float], list[float]]:
    """Per 0.01 bin: effective judgements and errors, and the monotone fit. Each bin counts as
    an effective binomial sample (Kish), so heavy audit weights are not mistaken for that many
    independent judgements."""
    n_w = [0.0] * 101
    e_w = [0.0] * 101
    sq_w = [0.0] * 101
    for o in observations:
        b = _bin(o.confidence)
        n_w[b] += o.weight
        sq_w[b] += o.weight * o.weight
        if o.error:
            e_w[b] += o.weight
    n_eff = [n_w[b] * n_w[b] / sq_w[b] if sq_w[b] > 0 else 0.0 for b in range(101)]
    k_eff = [e_w[b] / n_w[b] * n_eff[b] if n_w[b] > 0 else 0.0 for b in range(101)]
    fit = isotonic_decreasing([k_eff[b] / n_eff[b] if n_eff[b] else 0.0 for b in range(101)], n_eff)
    return n_eff, k_eff, fit


def _posterior_curves(
    n_eff: Sequence[float], k_eff: Sequence[float], fit: Sequence[float], rng: Any, draws: int
) -> list[list[float]]:
    """Draws of the monotone curve: each level set of the fit from its Jeffreys posterior,
    refitted (see _isotonic_bounds)."""
    blocks: list[tuple[list[int], float, float]] = []
    for b in range(101):
        if n_eff[b] <= 0:
            continue
        if blocks and abs(fit[blocks[-1][0][-1]] - fit[b]) < 1e-12:
            members, k, n = blocks[-1]
            blocks[-1] = ([*members, b], k + k_eff[b], n + n_eff[b])
        else:
            blocks.append(([b], k_eff[b], n_eff[b]))
    out = []
    for _ in range(draws):
        sample = [0.0] * 101
        for members, k, n in blocks:
            r = rng.betavariate(k + 0.5, n - k + 0.5)
            for b in members:
                sample[b] = r
        out.append(isotonic_decreasing(sample, n_eff))
    return out


@dataclass(frozen=True)
class JointBars:
    """Bars for every agent acting on one action type, chosen together: each agent acts
    alone where its own fitted error is at most the same marginal rate, the rate set as high
    as the type's error bound allows. The surest actions of every agent run alone first,
    as an oracle that knew each action's chance of being wrong would choose them."""

    action_type: str
    target: float
    level: float
    bars: dict[int, float | None]
    upper_bound: float | None
    point: float | None
    share_alone: float
    marginal: float | None


def joint_bars(
    action_type: str,
    evidence: Evidence,
    *,
    target: float,
    level: float = 0.95,
    seed: int = 0,
    min_decisions: int = MIN_DECISIONS,
) -> JointBars:
    """The per-agent bars of `action_type` that let the most run alone with the type's
    autonomous error within `target` at `level` (posterior bootstrap of every agent's monotone
    curve, drawn independently; an agent with little evidence borrows from the others, as in
    recommend_for)."""
    import random

    agents = sorted({a for a, _ in evidence.population})
    rng = random.Random(seed)
    curves: dict[int, tuple[list[float], list[int], list[list[float]]]] = {}
    for agent_id in agents:
        observations, _ = evidence.for_agent(agent_id)
        if len(observations) < min_decisions:
            continue
        n_eff, k_eff, fit = _curve(observations)
        pop = _population_bins([c for a, c in evidence.population if a == agent_id])
        draws = _posterior_curves(n_eff, k_eff, fit, rng, BOOTSTRAP_DRAWS)
        # Per draw: expected errors of this agent's actions at or above each bin.
        tails = [list(accumulate(pop[b] * d[b] for b in reversed(range(101))))[::-1] for d in draws]
        point_tail = list(accumulate(pop[b] * fit[b] for b in reversed(range(101))))[::-1]
        curves[agent_id] = (fit, pop, [point_tail, *tails])
    total = len(evidence.population)
    best: JointBars = JointBars(
        action_type, target, level, {a: None for a in agents}, None, None, 0.0, None
    )
    if not curves or not total:
        return best
    q = min(math.ceil(level * BOOTSTRAP_DRAWS) - 1, BOOTSTRAP_DRAWS - 1)
    # Lower the bars one bin at a time, the bin with the lowest fitted error first (ties:
    # the surer bin first, so each agent's bar comes down from the top, never skipping).
    steps = sorted(
        ((fit[b], -b, a) for a, (fit, pop, _t) in curves.items() for b in range(101) if pop[b]),
    )
    bars: dict[int, int] = {}
    alone = 0
    for rate, neg_b, agent_id in steps:
        b = -neg_b
        bars[agent_id] = b
        alone += curves[agent_id][1][b]
        errors = sorted(
            sum(curves[a][2][d + 1][bb] for a, bb in bars.items()) / alone
            for d in range(BOOTSTRAP_DRAWS)
        )
        bound = errors[q]
        if bound <= target and alone / total > best.share_alone:
            point = sum(curves[a][2][0][bb] for a, bb in bars.items()) / alone
            best = JointBars(
                action_type,
                target,
                level,
                {a: (round(bars[a] / 100, 2) if a in bars else None) for a in agents},
                bound,
                point,
                alone / total,
                rate,
            )
    return best


def _unjudged(
    observations: Sequence[Observation], population: Sequence[float], in_force: float | None
) -> list[UnjudgedRange]:
    """Confidence ranges (in 0.05 steps) at or above the bar in force where nobody judged an
    action, with how many actions were taken there."""
    if in_force is None:
        return []
    out: list[UnjudgedRange] = []
    start = math.floor(in_force * 20) / 20
    steps = round((1.0 - start) * 20)
    for i in range(steps):
        low, high = round(start + i / 20, 2), round(start + (i + 1) / 20, 2)
        last = i == steps - 1

        def inside(c: float, lo: float = low, hi: float = high, end: bool = last) -> bool:
            return c >= max(lo, in_force) - 1e-9 and (c < hi or end)

        if any(inside(o.confidence) for o in observations):
            continue
        actions = sum(1 for c in population if inside(c))
        if out and abs(out[-1].high - low) < 1e-9:
            out[-1] = UnjudgedRange(out[-1].low, high, out[-1].actions + actions)
        else:
            out.append(UnjudgedRange(max(low, in_force), high, actions))
    # Contiguous ranges nobody judged, merged; those where nothing ran either say nothing.
    return [u for u in out if u.actions]


def recommend(
    action_type: str,
    observations: Sequence[Observation],
    *,
    all_confidences: Sequence[float] | None = None,
    target: float = 0.01,
    level: float = 0.95,
    min_decisions: int = MIN_DECISIONS,
    method: str = "threshold",
    in_force: float | None = None,
    seed: int = 0,
    **extra: Any,
) -> Recommendation:
    """The lowest threshold whose upper bound on the error rate of what runs alone is within
    `target`. `all_confidences` (every recorded action of the type, decided by a person or
    not) gives the share that would run alone; without it the decided ones stand in.
    `in_force`: the bar in force, to say what above it nobody has judged."""
    if not 0 < target < 1 or not 0 < level < 1:
        raise ValueError("target and level must be between 0 and 1")
    if method not in ("threshold", "isotonic"):  # "joint": recommend_for
        raise ValueError(f"unknown method {method!r}")
    population = list(all_confidences) if all_confidences is not None else None
    if not population:
        population = [o.confidence for o in observations]
    errors_total = sum(1 for o in observations if o.error)
    common: dict[str, Any] = {
        "action_type": action_type,
        "target": target,
        "level": level,
        "decided": len(observations),
        "errors": errors_total,
        "calibration": calibration_table(observations),
        "method": method,
        "in_force": in_force,
        "unjudged": _unjudged(observations, population, in_force),
        **extra,
    }
    if len(observations) < min_decisions:
        return Recommendation(
            threshold=None,
            upper_bound=None,
            share_alone=None,
            rows=[],
            note=f"not enough evidence: {len(observations)} decided {action_type} actions, "
            f"at least {min_decisions} needed",
            **common,
        )
    rows: list[ThresholdRow] = []
    best: ThresholdRow | None = None
    # One sort, then every candidate's counts by binary search: O(n log n), not O(n x 101).
    ranked = sorted(observations, key=lambda o: o.confidence)
    confidences = [o.confidence for o in ranked]
    rev = list(reversed(ranked))
    errors_at_or_above = list(accumulate((o.error for o in rev), initial=0))[::-1]
    w_at_or_above = list(accumulate((o.weight for o in rev), initial=0.0))[::-1]
    sq_at_or_above = list(accumulate((o.weight * o.weight for o in rev), initial=0.0))[::-1]
    ew_at_or_above = list(accumulate((o.weight if o.error else 0.0 for o in rev), initial=0.0))[
        ::-1
    ]
    population_sorted = sorted(population)
    iso = _isotonic_bounds(observations, population, level, seed) if method == "isotonic" else None
    for t in CANDIDATES:
        first = bisect_left(confidences, t - 1e-9)
        alone = len(ranked) - first
        errors = errors_at_or_above[first]
        total_w, sq_w, err_w = w_at_or_above[first], sq_at_or_above[first], ew_at_or_above[first]
        if iso is not None:
            rate, bound = iso[_bin(t)]
            if not alone:
                bound = 1.0
        else:
            rate = err_w / total_w if total_w else 0.0
            bound = weighted_upper(err_w, total_w, sq_w, level)
        share = (len(population_sorted) - bisect_left(population_sorted, t - 1e-9)) / len(
            population_sorted
        )
        row = ThresholdRow(
            threshold=t,
            alone=alone,
            errors=errors,
            upper_bound=bound,
            share_alone=share,
            weighted_error_rate=rate,
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
        threshold=best.threshold if best else None,
        upper_bound=best.upper_bound if best else None,
        share_alone=best.share_alone if best else None,
        rows=rows,
        note=note,
        **common,
    )


# --- the evidence -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    observations: list[Observation]
    population: list[tuple[int, float]]  # (agent id, confidence) of every recorded action
    truncated: bool

    def for_agent(self, agent_id: int | None) -> tuple[list[Observation], float]:
        """The agent's evidence, topped up from its type's other agents when thin: those are
        scaled so that they add up to POOL_TO - n effective judgements. Returns the share
        of the weight borrowed."""
        if agent_id is None:
            return self.observations, 0.0
        own = [o for o in self.observations if o.agent_id == agent_id]
        others = [o for o in self.observations if o.agent_id != agent_id]
        missing = POOL_TO - len(own)
        if missing <= 0 or not others:
            return own, 0.0
        scale = min(1.0, missing / len(others))
        borrowed = [replace(o, weight=o.weight * scale) for o in others]
        own_w = sum(o.weight for o in own)
        lent_w = sum(o.weight for o in borrowed)
        return own + borrowed, lent_w / (own_w + lent_w) if own_w + lent_w else 0.0


def _is_error(verdict: str, edited: object) -> bool:
    return verdict != Verdict.APPROVE or edited is not None


def evidence_for(
    action_type: str, *, window_days: int | None = WINDOW_DAYS, now: datetime | None = None
) -> Evidence:
    """Every judgement of `action_type` in the window (see the module docstring)."""
    since = (now or timezone.now()) - timedelta(days=window_days) if window_days else None
    decisions = Decision.objects.filter(escalation__action__action_type=action_type).exclude(
        via=Via.SYSTEM
    )
    if since is not None:
        decisions = decisions.filter(created_at__gte=since)
    rows = list(
        decisions.order_by("-created_at").values_list(
            "escalation__action_id",
            "escalation__action__agent_id",
            "escalation__action__confidence",
            "escalation__action__audit_probability",
            "escalation__kind",
            "verdict",
            "edited_payload",
        )[: MAX_EVIDENCE + 1]
    )
    truncated = len(rows) > MAX_EVIDENCE
    by_action: dict[object, Observation] = {}
    for action_id, agent_id, confidence, p, kind, verdict, edited in rows[:MAX_EVIDENCE]:
        audit = kind == EscalationKind.AUDIT
        by_action[action_id] = Observation(
            confidence=float(confidence),
            error=_is_error(verdict, edited),
            weight=1.0 / p if audit and p else 1.0,
            agent_id=agent_id,
            source="audit" if audit else "review",
        )
    # Outcomes of what ran alone. A bad one makes the action an error whatever an audit said;
    # one nobody audited is evidence too, good or bad, weighted by the inverse of the share of
    # the type's autonomous actions that have an outcome at all (outcomes are a sample as
    # well: counting only the bad ones would read every reported action as wrong). Outcomes
    # of actions a person approved before they ran are left to that person's verdict: the
    # question is what letting it run without them changes.
    judged = ActionOutcome.objects.filter(
        action__action_type=action_type, action__outcome=PolicyOutcome.AUTO
    )
    if since is not None:
        judged = judged.filter(recorded_at__gte=since)
    outcomes: dict[object, tuple[int, float, bool]] = {}
    for action_id, agent_id, confidence, quality in judged.values_list(
        "action_id", "action__agent_id", "action__confidence", "quality"
    ).order_by()[:MAX_EVIDENCE]:
        _, _, bad_already = outcomes.get(action_id, (agent_id, confidence, False))
        outcomes[action_id] = (
            agent_id,
            float(confidence),
            bad_already or quality == OutcomeQuality.BAD,
        )
    unaudited = {a: o for a, o in outcomes.items() if a not in by_action}
    weight = 1.0
    if unaudited:
        autonomous = Action.objects.filter(action_type=action_type, outcome=PolicyOutcome.AUTO)
        if since is not None:
            autonomous = autonomous.filter(created_at__gte=since)
        weight = max(autonomous.count(), len(unaudited)) / len(unaudited)
    for judged_id, (agent_id, confidence, bad) in outcomes.items():
        seen = by_action.get(judged_id)
        if seen is not None:
            if bad:
                by_action[judged_id] = replace(seen, error=True)
            continue
        by_action[judged_id] = Observation(
            confidence=confidence, error=bad, weight=weight, agent_id=agent_id, source="outcome"
        )
    actions = Action.objects.filter(action_type=action_type)
    if since is not None:
        actions = actions.filter(created_at__gte=since)
    population = [
        (a, float(c))
        for a, c in actions.order_by("-created_at").values_list("agent_id", "confidence")[
            :MAX_EVIDENCE
        ]
    ]
    return Evidence(list(by_action.values()), population, truncated)


def observations_for(
    action_type: str, *, window_days: int | None = WINDOW_DAYS
) -> list[Observation]:
    """Every judgement of `action_type` in the window."""
    return evidence_for(action_type, window_days=window_days).observations


def bar_in_force(action_type: str, agent_id: int | None = None) -> float | None:
    """The strictest bar among enabled act-alone policies covering the type (and agent)."""
    policies = current_policy_set()
    bars = [
        p.min_confidence
        for p in policies.by_type.get(action_type, ()) + policies.by_type.get("", ())
        if p.outcome == PolicyOutcome.AUTO and (agent_id is None or p.agent_id in (None, agent_id))
    ]
    return max(bars) if bars else None


def recommend_for(
    action_type: str,
    *,
    agent_id: int | None = None,
    target: float | None = None,
    level: float | None = None,
    window_days: int | None = WINDOW_DAYS,
    method: str = DEFAULT_METHOD,
    evidence: Evidence | None = None,
) -> Recommendation:
    """The recommendation for an action type, or for one agent's actions of it (pooled
    towards the type when the agent has little evidence of its own)."""
    goal = target_for(action_type)
    evidence = evidence or evidence_for(action_type, window_days=window_days)
    observations, pooled = evidence.for_agent(agent_id)
    population = [c for a, c in evidence.population if agent_id is None or a == agent_id]
    own = [o for o in observations if agent_id is None or o.agent_id == agent_id]
    agent = ""
    if agent_id is not None:
        agent = (
            AgentProfile.objects.filter(pk=agent_id).values_list("name", flat=True).first() or ""
        )
    goal_target = target if target is not None else goal.target
    goal_level = level if level is not None else goal.level
    joint = None
    if method == "joint":
        if agent_id is None:
            method = "isotonic"  # one pool: the joint choice is per agent
        else:
            joint = joint_bars(action_type, evidence, target=goal_target, level=goal_level)
    rec = recommend(
        action_type,
        observations,
        all_confidences=population,
        target=goal_target,
        level=goal_level,
        method="isotonic" if joint is not None else method,
        in_force=bar_in_force(action_type, agent_id),
        agent=agent,
        target_source=goal.source if target is None else "given",
        window_days=window_days,
        truncated=evidence.truncated,
        audits=sum(1 for o in own if o.source == "audit"),
        bad_outcomes=sum(1 for o in own if o.source == "outcome" and o.error),
        outcomes=sum(1 for o in own if o.source == "outcome"),
        pooled_share=pooled,
    )
    if joint is None or agent_id is None:
        return rec
    bar = joint.bars.get(agent_id)
    own_share = (
        sum(1 for c in population if c >= bar - 1e-9) / len(population)
        if bar is not None and population
        else None
    )
    return replace(
        rec,
        method="joint",
        threshold=bar,
        upper_bound=joint.upper_bound if bar is not None else None,
        share_alone=own_share,
        note=rec.note
        if bar is not None
        else (
            f"no bar for {rec.subject} keeps the error of every {action_type} run alone within "
            f"{goal_target:.1%} on this evidence; keep these actions in review"
        ),
    )
