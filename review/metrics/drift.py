"""Drift detection: is an agent acting alone still as right, at the same confidence, as it was?

One monitor per (agent, action type) that acts alone. When armed it fits the agent's
error-vs-confidence curve p0(c) (monotone, `escalations.recommender.isotonic_decreasing`)
on its latest judgements; from then on every judgement of that agent and type — decisions
on its escalations (the band below the bar) and on audits of what ran alone (above it),
both read through the confidence they were made at, so the sampling does not bias it — feeds
a Bernoulli CUSUM against the alternative "the odds of an error are ODDS_RATIO times what
they were":

    S <- max(0, S + y log(p1/p0) + (1 - y) log((1 - p1)/(1 - p0)))

S crossing THRESHOLD opens an incident on the calibration-drift alert rule for that agent and
type (the dashboard lists it; its owner team hears on Slack once) and, when a policy letting
it act alone says `tighten_on_drift`, puts a review-everything hold policy in place at once.
Both stay until a person acknowledges (`acknowledge_drift`), which re-arms the monitor on
the evidence as it is then. The test uses the shape of the curve, not the threshold: a
shifted curve shows in the escalated band long before the few audits above the bar could
show it, which is what lets a 2% audit rate catch a drift within a couple of thousand actions.
THRESHOLD and ODDS_RATIO were set on the calibration simulation's agents. At x2.5 and 7 (3
false alerts on a no-drift stream of 360,000 actions) a drift tripling an agent's errors was
caught in a median 1,110 actions of its type but only 90% within 2,472: an agent that
escalates ~5% of its actions gives little evidence per action. x3 and 5 trade some of that
unused false-alarm budget (the goal is under 1 per 10,000 actions; an in-memory study of
the simulation's agents gave ~0.3-0.45 per 10,000, against ~0.1 before) for speed: median
~700-950 actions, 90% within ~1,300-1,700 in the same study.
The price is per judgement: at h=5 one false alarm per ~2,800 judgements of a steady agent
(~20,000 at x2.5 / 7), and the budget is per action. So h=5 holds for an agent judged on at
most JUDGED_SHARE (10%) of its actions, and an agent judged on a larger share f (most of it
escalated: a high bar) gets h = 5 + ln(f / 10%), up to ~7.3 when everything is judged: its
false alarms per action stay where a lightly judged agent's are, and it has the evidence to
pay for the higher bar (`threshold_for`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from escalations.actions import save_policy
from escalations.models import (
    AgentProfile,
    AutonomyPolicy,
    Decision,
    EscalationKind,
    Verdict,
    Via,
)
from escalations.recommender import isotonic_decreasing, target_for
from workflows import outbox
from workflows.models import Action, PolicyOutcome

from .alerts import NOTIFY_TASK
from .models import AlertIncident, AlertMetric, AlertRule, DriftMonitor

log = logging.getLogger(__name__)

ODDS_RATIO = 3.0
THRESHOLD = 5.0  # for an agent judged on at most JUDGED_SHARE of its actions
JUDGED_SHARE = 0.10
REFERENCE_SIZE = 2000
MIN_REFERENCE = 200
# Never read a probability as certain: one surprise would otherwise be infinite evidence.
P_FLOOR, P_CEIL = 0.005, 0.995
HOLD_PRIORITY = 100_000


@dataclass(frozen=True)
class Judgement:
    id: int
    confidence: float
    error: bool
    audit: bool


def _bin(confidence: float) -> int:
    return min(max(int(round(confidence * 100, 6)), 0), 100)


def fit_reference(judgements: list[Judgement]) -> list[float]:
    """p0 per 0.01 confidence bin: a monotone fit of the judgements, each bin shrunk
    towards its neighbours by a Jeffreys prior so a thin bin is never read as 0 or 1."""
    n = [0.0] * 101
    k = [0.0] * 101
    for j in judgements:
        b = _bin(j.confidence)
        n[b] += 1
        k[b] += j.error
    rates = [(k[b] + 0.5) / (n[b] + 1) if n[b] else 0.0 for b in range(101)]
    fitted = isotonic_decreasing(rates, n)
    return [min(max(p, P_FLOOR), P_CEIL) for p in fitted]


def llr(p0: float, error: bool, odds_ratio: float = ODDS_RATIO) -> float:
    odds = p0 / (1 - p0) * odds_ratio
    p1 = odds / (1 + odds)
    return math.log(p1 / p0) if error else math.log((1 - p1) / (1 - p0))


def threshold_for(judged_share: float) -> float:
    """The CUSUM's bar for an agent judged on `judged_share` of its actions of the type:
    false alarms come per judgement, the budget per action."""
    return THRESHOLD + math.log(max(judged_share, JUDGED_SHARE) / JUDGED_SHARE)


def _judged_share(monitor: DriftMonitor) -> float:
    """Judgements read since the monitor was armed per action of its agent and type since."""
    if monitor.armed_at is None:
        return JUDGED_SHARE
    acted = Action.objects.filter(
        agent_id=monitor.agent_id,
        action_type=monitor.action_type,
        created_at__gte=monitor.armed_at,
    ).count()
    return min(monitor.observed / acted, 1.0) if acted else JUDGED_SHARE


def judgements(
    agent_id: int, action_type: str, *, after: int = 0, newest: int | None = None
) -> list[Judgement]:
    """People's decisions on this agent's actions of this type (escalations and audits),
    oldest first; `after` a decision id, or only the `newest` ones."""
    qs = (
        Decision.objects.filter(
            escalation__action__agent_id=agent_id,
            escalation__action__action_type=action_type,
            pk__gt=after,
        )
        .exclude(via=Via.SYSTEM)
        .values_list(
            "pk", "escalation__action__confidence", "verdict", "edited_payload", "escalation__kind"
        )
    )
    if newest is not None:
        rows = list(qs.order_by("-pk")[:newest])[::-1]
    else:
        rows = list(qs.order_by("pk"))
    return [
        Judgement(
            id=pk,
            confidence=float(c),
            error=verdict != Verdict.APPROVE or edited is not None,
            audit=kind == EscalationKind.AUDIT,
        )
        for pk, c, verdict, edited, kind in rows
    ]


def _arm(monitor: DriftMonitor, now: datetime) -> bool:
    recent = judgements(monitor.agent_id, monitor.action_type, newest=REFERENCE_SIZE)
    if len(recent) < MIN_REFERENCE:
        return False
    monitor.reference = fit_reference(recent)
    monitor.reference_size = len(recent)
    monitor.cursor = recent[-1].id
    monitor.cusum = 0.0
    monitor.observed = 0
    monitor.armed_at = now
    monitor.alerted_at = None
    monitor.incident = None
    monitor.hold_policy = None
    monitor.save()
    return True


def _advance(monitor: DriftMonitor) -> list[Judgement]:
    new = judgements(monitor.agent_id, monitor.action_type, after=monitor.cursor)
    s = monitor.cusum
    for j in new:
        s = max(0.0, s + llr(monitor.reference[_bin(j.confidence)], j.error))
    if new:
        monitor.cusum = s
        monitor.cursor = new[-1].id
        monitor.observed += len(new)
    return new


def _owner_policy(agent: AgentProfile, action_type: str) -> AutonomyPolicy | None:
    """The act-alone policy covering this agent and type that asks to tighten, if any."""
    return (
        AutonomyPolicy.objects.filter(
            Q(agent=agent) | Q(agent__isnull=True),
            enabled=True,
            outcome=PolicyOutcome.AUTO,
            tighten_on_drift=True,
            action_type__in=[action_type, ""],
        )
        .order_by("-priority", "pk")
        .first()
    )


def tighten(*, agent: AgentProfile, action_type: str, because: str) -> AutonomyPolicy:
    """Every action of `agent` and `action_type` goes to review from the next evaluation:
    a hold policy, visible and versioned like any other (disable it to lift it)."""
    owner = _owner_policy(agent, action_type)
    hold = AutonomyPolicy(
        name=f"Drift hold: {agent.name} / {action_type}",
        priority=HOLD_PRIORITY,
        agent=agent,
        action_type=action_type,
        outcome=PolicyOutcome.REVIEW,
        team_id=owner.team_id if owner is not None else None,
    )
    return save_policy(policy=hold, reason=because[:100])


def _estimate(monitor: DriftMonitor, seen: list[Judgement]) -> tuple[float, int]:
    audits = [j for j in seen if j.audit]
    return (sum(j.error for j in audits) / len(audits) if audits else math.nan), len(audits)


def _alert(
    rule: AlertRule, monitor: DriftMonitor, seen: list[Judgement], now: datetime
) -> AlertIncident | None:
    agent = monitor.agent
    goal = target_for(monitor.action_type)
    rate, audited = _estimate(monitor, seen)
    detail = (
        f"{agent.name}'s {monitor.action_type} is wrong more often at the same confidence than "
        f"when it was last checked ({monitor.armed_at:%Y-%m-%d %H:%M} UTC): CUSUM "
        f"{monitor.cusum:.1f} > {threshold_for(_judged_share(monitor)):.1f} over "
        f"{monitor.observed} judgements since. "
        + (
            f"Recent audits of what ran alone: {rate:.1%} wrong ({audited} judged); "
            if audited
            else ""
        )
        + f"target {goal.target:.1%}."
    )
    hold = None
    if _owner_policy(agent, monitor.action_type) is not None:
        hold = tighten(agent=agent, action_type=monitor.action_type, because="drift detected")
        detail += (
            f" Autonomy tightened: every {monitor.action_type} of {agent.name} goes to review "
            "until someone acknowledges the drift."
        )
    try:
        with transaction.atomic():
            incident = AlertIncident.objects.create(
                rule=rule,
                subject=f"{agent.name}/{monitor.action_type}",
                detail=detail,
                value_at_open=rate if audited else 0.0,
                last_value=rate if audited else 0.0,
                samples=monitor.observed,
                opened_at=now,
            )
    except IntegrityError:
        return None
    monitor.alerted_at = now
    monitor.incident = incident
    monitor.hold_policy = hold
    # The post is an outbox row written with the incident, as for every alert (alerts.py).
    outbox.enqueue(NOTIFY_TASK, incident.pk)
    return incident


def check_drift(
    rule: AlertRule, *, now: datetime | None = None, agent_ids: list[int] | None = None
) -> dict[str, int]:
    """Read every new judgement of each (agent, action type) that acted alone within the
    rule's window (of `agent_ids` only, if given); alert (and tighten) where the test
    crosses. Safe to run repeatedly."""
    now = now or timezone.now()
    since = now - timedelta(minutes=rule.window_minutes)
    pairs = Action.objects.filter(outcome=PolicyOutcome.AUTO, created_at__gte=since)
    if rule.agent_id is not None:
        pairs = pairs.filter(agent_id=rule.agent_id)
    if agent_ids is not None:
        pairs = pairs.filter(agent_id__in=agent_ids)
    armed = opened = 0
    # order_by(): the model's default ordering would make DISTINCT one row per action.
    for agent_id, action_type in pairs.order_by().values_list("agent_id", "action_type").distinct():
        with transaction.atomic():
            monitor, _ = DriftMonitor.objects.select_for_update().get_or_create(
                agent_id=agent_id, action_type=action_type
            )
            if not monitor.reference:
                armed += _arm(monitor, now)
                continue
            if monitor.alerted_at is not None:
                continue  # until a person looks
            seen = _advance(monitor)
            if (
                monitor.observed >= rule.min_samples
                and monitor.cusum > THRESHOLD
                and monitor.cusum > threshold_for(_judged_share(monitor))
            ):
                recent = judgements(agent_id, action_type, newest=max(monitor.observed, 1))
                if _alert(rule, monitor, recent, now) is not None:
                    opened += 1
            elif not seen:
                continue
            monitor.save()
    return {"armed": armed, "opened": opened}


def acknowledge_drift(*, monitor_id: int, user: User) -> DriftMonitor:
    """A person looked: close the incident, lift the hold, re-arm on the evidence as it is."""
    now = timezone.now()
    with transaction.atomic():
        monitor = DriftMonitor.objects.select_for_update().get(pk=monitor_id)
        if monitor.incident_id is not None:
            AlertIncident.objects.filter(pk=monitor.incident_id, closed_at__isnull=True).update(
                closed_at=now
            )
        hold = monitor.hold_policy
        if hold is not None and hold.enabled:
            hold.enabled = False
            save_policy(policy=hold, user=user, reason="drift acknowledged")
        monitor.reference = []
        monitor.alerted_at = None
        monitor.incident = None
        monitor.hold_policy = None
        monitor.cusum = 0.0
        monitor.observed = 0
        monitor.save()
        _arm(monitor, now)
    return monitor


def evaluate_drift_rules(*, now: datetime | None = None) -> dict[str, int]:
    total = {"armed": 0, "opened": 0}
    for rule in AlertRule.objects.filter(enabled=True, metric=AlertMetric.CALIBRATION_DRIFT):
        for k, v in check_drift(rule, now=now).items():
            total[k] += v
    return total
