"""The calibration simulation (`manage.py calibration_sim`): synthetic agents with known,
deliberately miscalibrated accuracy curves, pushed through the real path — `submit_action`
(policy evaluation, audit sampling, escalation), `decide_escalation` by simulated reviewers
who know the truth, `record_action_result` (execution, audits after it) — then the real
recommender and the real drift check, measured against an oracle that knows every action's
true chance of being wrong.

It fills the database it is given: `manage.py calibration_sim` creates a throwaway
database for it (named like the test database, with a `_calibration_sim` suffix) and drops
it afterwards, so the live one is never touched; every other policy is disabled in it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.test.utils import override_settings

from api.actions import create_api_token, record_action_result, submit_action
from api.models import ApiToken
from escalations import audit
from escalations.actions import decide_escalation, save_policy
from escalations.models import (
    UNDECIDED_STATUSES,
    AgentProfile,
    AutonomyPolicy,
    Escalation,
    Team,
    Verdict,
    Via,
)
from escalations.policy import clear_cache
from escalations.recommender import evidence_for, recommend_for, target_for
from review.metrics.drift import check_drift
from review.metrics.models import AlertMetric, AlertRule, DriftMonitor
from workflows.models import Action, ActionStatus, PolicyOutcome

Curve = Callable[[float], float]

CURVES: dict[str, Curve] = {
    # P(right | confidence c).
    "calibrated": lambda c: c,
    "overconfident": lambda c: c**2.2,
    "underconfident": lambda c: 1 - (1 - c) ** 2,
}

PAYLOADS: dict[str, Callable[[int], dict[str, Any]]] = {
    "send_reply": lambda i: {"ticket_id": f"S-{i}", "to": "c@example.com", "body": "Hello"},
    "update_crm": lambda i: {"ticket_id": f"S-{i}", "priority": "low"},
    "route_to_team": lambda i: {"ticket_id": f"S-{i}", "team": "billing"},
}


@dataclass
class SimAgent:
    name: str
    action_type: str
    curve: str
    shift_after: int | None = None  # its own action count (evaluation phase) where drift starts
    shift: float = 0.07
    # Confidence ~ Beta(a, b): most mass high, like a model that is usually sure.
    a: float = 10.0
    b: float = 1.5

    def p_right(self, c: float, drifted: bool) -> float:
        # A drift moves the curve right: the same confidence is right less often.
        x = c - self.shift if drifted else c
        return min(max(CURVES[self.curve](max(x, 0.0)), 0.0), 1.0)


DEFAULT_AGENTS = (
    SimAgent("sim-reply-calibrated", "send_reply", "calibrated"),
    SimAgent("sim-reply-overconfident", "send_reply", "overconfident"),
    SimAgent("sim-crm-underconfident", "update_crm", "underconfident"),
    SimAgent("sim-crm-drifting", "update_crm", "calibrated", shift_after=1000),
    SimAgent("sim-route-overconfident", "route_to_team", "overconfident"),
    SimAgent("sim-route-calibrated", "route_to_team", "calibrated"),
)


@dataclass
class Tally:
    actions: int = 0
    alone: int = 0
    alone_wrong: int = 0
    alone_p: float = 0.0
    decisions: int = 0
    audits: int = 0
    truths: list[float] = field(default_factory=list)  # P(wrong) of every action


@dataclass
class Config:
    warmup: int = 1500
    actions: int = 3000
    audit_rate: float = 0.02
    # A new deployment reviews everything first: the warm-up's evidence is complete.
    start_bar: float = 1.0
    method: str = "isotonic"
    check_every: int = 25
    seed: int = 7
    agents: tuple[SimAgent, ...] = DEFAULT_AGENTS
    drift_horizon: int = 2000  # the trade-off runs this many actions past the drift start


# Nobody is watching the queue of a simulation: queue pushes stay in this process.
_IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


class Simulation:
    def __init__(self, config: Config, log: Callable[[str], None] = lambda s: None) -> None:
        self.config = config
        self.log = log
        self.rng = random.Random(config.seed)
        self.audit_rng = random.Random(config.seed + 1)
        self.tokens: dict[str, ApiToken] = {}
        self.policies: dict[str, AutonomyPolicy] = {}
        self.agents: dict[str, AgentProfile] = {}
        self.counter = 0

    # --- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        AutonomyPolicy.objects.filter(enabled=True).update(enabled=False)
        AlertRule.objects.filter(metric=AlertMetric.CALIBRATION_DRIFT).update(enabled=False)
        self.rule = AlertRule.objects.create(
            name="sim drift", metric=AlertMetric.CALIBRATION_DRIFT, window_minutes=60 * 24
        )
        self.team, _ = Team.objects.get_or_create(slug="sim-calibration", name="Sim calibration")
        self.reviewer, _ = User.objects.get_or_create(username="sim-reviewer")
        self.team.members.add(self.reviewer)
        for spec in self.config.agents:
            agent, _ = AgentProfile.objects.update_or_create(
                name=spec.name, defaults={"team": self.team, "autonomy_paused": False}
            )
            Action.objects.filter(agent=agent).delete()
            DriftMonitor.objects.filter(agent=agent).delete()
            self.agents[spec.name] = agent
            self.tokens[spec.name], _raw = create_api_token(agent=agent, name="sim")
            self.policies[spec.name] = save_policy(
                policy=AutonomyPolicy(
                    name=f"sim {spec.name}",
                    agent=agent,
                    action_type=spec.action_type,
                    outcome=PolicyOutcome.AUTO,
                    min_confidence=self.config.start_bar,
                    irreversible_requires_review=False,
                    audit_rate=self.config.audit_rate,
                    tighten_on_drift=spec.shift_after is not None,
                    team=self.team,
                )
            )
        clear_cache()

    # --- one action through the real path --------------------------------------------------

    def _judge(self, escalation: Escalation, right: bool) -> None:
        decide_escalation(
            escalation_id=escalation.pk,
            user=self.reviewer,
            verdict=Verdict.APPROVE if right else Verdict.REJECT,
            via=Via.API,
            reason="" if right else "wrong (simulated reviewer)",
        )

    def act(self, spec: SimAgent, tally: Tally, *, drifted: bool) -> Action:
        c = round(self.rng.betavariate(spec.a, spec.b), 4)
        p_right = spec.p_right(c, drifted)
        right = self.rng.random() < p_right
        self.counter += 1
        token = self.tokens[spec.name]
        action, _ = submit_action(
            token=token,
            action_type=spec.action_type,
            payload=PAYLOADS[spec.action_type](self.counter),
            confidence=c,
            idempotency_key=f"sim-{self.counter}",
        )
        tally.actions += 1
        tally.truths.append(1 - p_right)
        escalation = Escalation.objects.filter(action=action).first()
        if escalation is not None:
            # A review, or an irreversible action held for audit before it runs.
            self._judge(escalation, right)
            tally.decisions += 1
            tally.audits += escalation.kind == "audit"
            action.refresh_from_db(fields=["status"])
        if action.outcome == PolicyOutcome.AUTO:
            tally.alone += 1
            tally.alone_wrong += not right
            tally.alone_p += 1 - p_right
        if action.status in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
            record_action_result(token=token, action_id=action.pk, succeeded=True, result={})
            after = Escalation.objects.filter(
                action=action, kind="audit", status__in=UNDECIDED_STATUSES
            ).first()
            if after is not None:
                self._judge(after, right)
                tally.decisions += 1
                tally.audits += 1
        return action

    # --- phases -----------------------------------------------------------------------------

    def _stream(self, per_agent: int) -> list[SimAgent]:
        order = [s for s in self.config.agents for _ in range(per_agent)]
        self.rng.shuffle(order)
        return order

    def _recommend(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        evidence = {t: evidence_for(t) for t in {s.action_type for s in self.config.agents}}
        for spec in self.config.agents:
            agent = self.agents[spec.name]
            out[spec.name] = {
                m: recommend_for(
                    spec.action_type,
                    agent_id=agent.pk,
                    method=m,
                    evidence=evidence[spec.action_type],
                )
                for m in ("threshold", "isotonic")
            }
        return out

    def _apply(self, spec: SimAgent, threshold: float | None) -> None:
        policy = self.policies[spec.name]
        if threshold is None:
            policy.outcome = PolicyOutcome.REVIEW
        else:
            policy.min_confidence = threshold
        self.policies[spec.name] = save_policy(policy=policy, reason="recommended (simulation)")

    def run(self) -> dict[str, Any]:
        """Run it in the database in use: the caller provides one it may fill (the command
        makes a throwaway one; a test has its own). Each action commits on its own, as in
        production: one transaction around thousands of savepoints would overflow
        PostgreSQL's subtransaction cache and slow every query to a crawl."""
        started = time.monotonic()
        with audit.use_rng(self.audit_rng), override_settings(CHANNEL_LAYERS=_IN_MEMORY):
            try:
                self._setup()
                result = self._run()
            finally:
                clear_cache()
        result["seconds"] = round(time.monotonic() - started, 1)
        return result

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        warm = {s.name: Tally() for s in cfg.agents}
        for spec in self._stream(cfg.warmup):
            self.act(spec, warm[spec.name], drifted=False)
        self.log(f"warm-up: {cfg.warmup} actions per agent")
        recs = self._recommend()
        for spec in cfg.agents:
            self._apply(spec, recs[spec.name][cfg.method].threshold)
        clear_cache()
        # Arm the drift monitors on the warm-up evidence.
        ids = [a.pk for a in self.agents.values()]
        check_drift(self.rule, agent_ids=ids)

        before = {s.name: Tally() for s in cfg.agents}  # no drift (yet)
        after = {s.name: Tally() for s in cfg.agents}  # drifted
        seen: dict[str, int] = {s.name: 0 for s in cfg.agents}
        detected: dict[str, int | None] = {}
        false_alerts: list[str] = []
        alerted: set[str] = set()
        for i, spec in enumerate(self._stream(cfg.actions), start=1):
            drifted = spec.shift_after is not None and seen[spec.name] >= spec.shift_after
            self.act(spec, (after if drifted else before)[spec.name], drifted=drifted)
            seen[spec.name] += 1
            if i % cfg.check_every == 0:
                check_drift(self.rule, agent_ids=ids)
                for name in self._alerted() - alerted:
                    alerted.add(name)
                    s = next(a for a in cfg.agents if a.name == name)
                    if s.shift_after is not None and seen[name] > s.shift_after:
                        detected[name] = seen[name] - s.shift_after
                    else:
                        false_alerts.append(name)
        for s in cfg.agents:
            if s.shift_after is not None and s.name not in detected:
                detected[s.name] = None
        no_drift_actions = sum(t.actions for t in before.values())
        return {
            "config": cfg,
            "recommendations": recs,
            "warmup": warm,
            "before": before,
            "after": after,
            "detected": detected,
            "false_alerts": false_alerts,
            "no_drift_actions": no_drift_actions,
            "per_type": self._per_type(before, recs),
        }

    def _alerted(self) -> set[str]:
        return set(
            DriftMonitor.objects.filter(
                agent__in=self.agents.values(), alerted_at__isnull=False
            ).values_list("agent__name", flat=True)
        )

    def _per_type(
        self, before: dict[str, Tally], recs: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        rows = []
        for action_type in sorted({s.action_type for s in self.config.agents}):
            names = [s.name for s in self.config.agents if s.action_type == action_type]
            tallies = [before[n] for n in names]
            n = sum(t.actions for t in tallies)
            alone = sum(t.alone for t in tallies)
            wrong = sum(t.alone_wrong for t in tallies)
            expected = sum(t.alone_p for t in tallies)
            truths = [p for t in tallies for p in t.truths]
            error = wrong / alone if alone else 0.0
            oracle = oracle_autonomy(truths, max(error, expected / alone if alone else 0.0))
            rows.append(
                {
                    "action_type": action_type,
                    "actions": n,
                    "autonomy": alone / n if n else 0.0,
                    "error": error,
                    "expected_error": expected / alone if alone else 0.0,
                    "target": target_for(action_type).target,
                    "oracle_autonomy": oracle,
                    "decisions": sum(t.decisions for t in tallies),
                    "audits": sum(t.audits for t in tallies),
                    "bars": {nm: recs[nm][self.config.method].threshold for nm in names},
                }
            )
        return rows


def oracle_autonomy(p_wrong: list[float], error: float) -> float:
    """The most an oracle who knows each action's chance of being wrong could let run alone
    with at most `error` of them wrong on average: the surest first."""
    if not p_wrong:
        return 0.0
    total = 0.0
    taken = 0
    for p in sorted(p_wrong):
        if (total + p) / (taken + 1) > error + 1e-12:
            break
        total += p
        taken += 1
    return taken / len(p_wrong)


def method_comparison(result: dict[str, Any], config: Config) -> list[dict[str, Any]]:
    """Both recommenders' bars from the same warm-up evidence, scored analytically on the same
    evaluation stream (the generator's true curves): autonomy, the true error of what would
    run alone, and the oracle's autonomy at that error."""
    rows = []
    for action_type in sorted({s.action_type for s in config.agents}):
        specs = [s for s in config.agents if s.action_type == action_type]
        rng = random.Random(config.seed + 99)
        stream = [(s, rng.betavariate(s.a, s.b)) for s in specs for _ in range(config.actions)]
        truths = [1 - s.p_right(c, False) for s, c in stream]
        for method in ("threshold", "isotonic"):
            bars = {s.name: result["recommendations"][s.name][method].threshold for s in specs}
            alone = [
                1 - s.p_right(c, False)
                for s, c in stream
                if bars[s.name] is not None and c >= bars[s.name] - 1e-9
            ]
            error = sum(alone) / len(alone) if alone else 0.0
            oracle = oracle_autonomy(truths, error)
            autonomy = len(alone) / len(stream)
            rows.append(
                {
                    "action_type": action_type,
                    "method": method,
                    "bars": bars,
                    "autonomy": autonomy,
                    "error": error,
                    "target": target_for(action_type).target,
                    "oracle_autonomy": oracle,
                    "ratio": autonomy / oracle if oracle else math.nan,
                }
            )
    return rows
