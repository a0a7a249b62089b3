"""The calibration simulation (`manage.py calibration_sim`): synthetic agents with known,
deliberately miscalibrated accuracy curves, pushed through the real path — `create_action`
(policy evaluation, audit sampling, escalation or an audit hold), `execute_action` for what
was drawn for audit after it runs, `decide_escalation` by simulated reviewers who know the
truth — then the real recommender and the real drift check, measured against an oracle that
knows every action's true chance of being wrong.

What makes it fast enough to run in minutes: reviewers work in batches (every
`Config.review_every` actions they decide everything waiting, as a desk would), actions
nobody audits are not executed (their results feed nothing the simulation measures), and the
method comparison scores each recommender's bars analytically on the true curves.

It fills the database it is given: `manage.py calibration_sim` creates a throwaway database
for it and drops it afterwards, so the live one is never touched; every other policy is
disabled in it.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.test.utils import override_settings

from escalations import audit
from escalations.actions import decide_escalation, save_policy
from escalations.models import (
    UNDECIDED_STATUSES,
    AgentProfile,
    AutonomyPolicy,
    Escalation,
    EscalationKind,
    Team,
    Verdict,
    Via,
)
from escalations.policy import clear_cache
from escalations.recommender import evidence_for, joint_bars, recommend_for, target_for
from review.metrics.drift import check_drift
from review.metrics.models import AlertMetric, AlertRule, DriftMonitor
from workflows.actions import create_action, execute_action
from workflows.models import Action, ActionStatus, PolicyOutcome

Curve = Callable[[float], float]

CURVES: dict[str, Curve] = {
    # P(wrong | confidence c).
    "calibrated": lambda c: 1 - c,
    "overconfident": lambda c: 1 - c**2.2,
    "underconfident": lambda c: (1 - c) ** 2,
}

PAYLOADS: dict[str, Callable[[int], dict[str, Any]]] = {
    "send_reply": lambda i: {"ticket_id": f"S-{i}", "to": "c@example.com", "body": "Hello"},
    "update_crm": lambda i: {"ticket_id": f"S-{i}", "priority": "low"},
    "route_to_team": lambda i: {"ticket_id": f"S-{i}", "team": "billing"},
}

METHODS = ("threshold", "isotonic", "joint")


@dataclass(frozen=True)
class SimAgent:
    name: str
    action_type: str
    curve: str
    # Its own action count in the evaluation phase where the drift starts (None: never).
    drift_after: int | None = None
    # A drift multiplies the chance of being wrong at every confidence: the same
    # confidence is right less often; x3 triples the error of what it does alone.
    drift_factor: float = 3.0
    # Confidence ~ Beta(a, b): most mass high, like a model that is usually sure.
    a: float = 8.0
    b: float = 1.5

    def p_wrong(self, c: float, drifted: bool = False) -> float:
        p = CURVES[self.curve](c)
        return min(max(p * (self.drift_factor if drifted else 1.0), 0.0), 1.0)


DEFAULT_AGENTS = (
    SimAgent("sim-reply-underconfident", "send_reply", "underconfident"),
    SimAgent("sim-reply-overconfident", "send_reply", "overconfident"),
    SimAgent("sim-crm-calibrated", "update_crm", "calibrated"),
    SimAgent("sim-crm-drifting", "update_crm", "underconfident", drift_after=1500),
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


@dataclass(frozen=True)
class Config:
    warmup: int = 1500
    actions: int = 4000
    audit_rate: float = 0.02
    # A new deployment reviews everything first: the warm-up's evidence is complete.
    start_bar: float = 1.0
    method: str = "joint"
    review_every: int = 50  # simulated reviewers clear the queue this often (actions)
    check_every: int = 50  # the drift check runs this often (actions)
    seed: int = 7
    agents: tuple[SimAgent, ...] = DEFAULT_AGENTS
    score_sample: int = 20_000  # per agent, for the analytic method comparison


# Nobody is watching the queue of a simulation: queue pushes stay in this process.
_IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


class Simulation:
    def __init__(self, config: Config, log: Callable[[str], None] = lambda s: None) -> None:
        self.config = config
        self.log = log
        self.rng = random.Random(config.seed)
        self.audit_rng = random.Random(config.seed + 1)
        self.policies: dict[str, AutonomyPolicy] = {}
        self.agents: dict[str, AgentProfile] = {}
        self.counter = 0
        self.key = uuid.uuid4().hex[:8]  # several simulations may share a database
        # Waiting for the simulated reviewers: escalation id -> (was it right?, tally).
        self.pending: dict[Any, tuple[bool, Tally]] = {}

    # --- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        AutonomyPolicy.objects.filter(enabled=True).update(enabled=False)
        AlertRule.objects.filter(metric=AlertMetric.CALIBRATION_DRIFT).update(enabled=False)
        self.rule = AlertRule.objects.create(
            name="sim drift", metric=AlertMetric.CALIBRATION_DRIFT, window_minutes=60 * 24
        )
        self.team, _ = Team.objects.get_or_create(slug="sim-calibration", name="Sim calibration")
        # An admin: a team member's access check (team_id IN (...) AND id = ...) made SQLite
        # scan the one team's escalations on every decision, instead of the primary key.
        self.reviewer, _ = User.objects.get_or_create(
            username="sim-reviewer", defaults={"is_superuser": True, "is_staff": True}
        )
        self.team.members.add(self.reviewer)
        for spec in self.config.agents:
            agent, _ = AgentProfile.objects.update_or_create(
                name=spec.name, defaults={"team": self.team, "autonomy_paused": False}
            )
            Action.objects.filter(agent=agent).delete()
            DriftMonitor.objects.filter(agent=agent).delete()
            self.agents[spec.name] = agent
            self.policies[spec.name] = save_policy(
                policy=AutonomyPolicy(
                    name=f"sim {spec.name}",
                    agent=agent,
                    action_type=spec.action_type,
                    outcome=PolicyOutcome.AUTO,
                    min_confidence=self.config.start_bar,
                    irreversible_requires_review=False,
                    audit_rate=self.config.audit_rate,
                    tighten_on_drift=spec.drift_after is not None,
                    team=self.team,
                )
            )
        clear_cache()

    # --- one action through the real path --------------------------------------------------

    def act(self, spec: SimAgent, tally: Tally, *, drifted: bool) -> Action:
        c = round(self.rng.betavariate(spec.a, spec.b), 4)
        p_wrong = spec.p_wrong(c, drifted)
        right = self.rng.random() >= p_wrong
        self.counter += 1
        with transaction.atomic():
            action = create_action(
                agent=self.agents[spec.name],
                workflow="calibration-sim",
                action_type=spec.action_type,
                payload=PAYLOADS[spec.action_type](self.counter),
                confidence=c,
                rationale="simulated",
                idempotency_key=f"sim-{self.key}-{self.counter}",
            )
        tally.actions += 1
        tally.truths.append(p_wrong)
        if action.outcome == PolicyOutcome.AUTO:
            tally.alone += 1
            tally.alone_wrong += not right
            tally.alone_p += p_wrong
        if action.status == ActionStatus.ESCALATED:
            # A review, or an irreversible action held for its audit before it runs.
            self.pending[action.escalation.pk] = (right, tally)
        elif action.audit_sampled:
            # Drawn for audit: it runs, then its audit opens (the engine's own path).
            execute_action(action=action)
            esc = Escalation.objects.filter(action=action, status__in=UNDECIDED_STATUSES).first()
            if esc is not None:
                self.pending[esc.pk] = (right, tally)
        return action

    def review(self) -> None:
        """The simulated reviewers clear the queue: each verdict through decide_escalation."""
        if not self.pending:
            return
        kinds = dict(Escalation.objects.filter(pk__in=list(self.pending)).values_list("pk", "kind"))
        for pk, (right, tally) in self.pending.items():
            decide_escalation(
                escalation_id=pk,
                user=self.reviewer,
                verdict=Verdict.APPROVE if right else Verdict.REJECT,
                via=Via.API,
                reason="" if right else "wrong (simulated reviewer)",
            )
            tally.decisions += 1
            tally.audits += kinds.get(pk) == EscalationKind.AUDIT
        self.pending.clear()

    # --- phases -----------------------------------------------------------------------------

    def _stream(self, per_agent: int) -> list[SimAgent]:
        order = [s for s in self.config.agents for _ in range(per_agent)]
        self.rng.shuffle(order)
        return order

    def recommend(self) -> dict[str, dict[str, float | None]]:
        """Every method's bar per agent, from the same evidence."""
        out: dict[str, dict[str, float | None]] = {m: {} for m in METHODS}
        for action_type in sorted({s.action_type for s in self.config.agents}):
            evidence = evidence_for(action_type)
            goal = target_for(action_type)
            joint = joint_bars(action_type, evidence, target=goal.target, level=goal.level)
            for spec in self.config.agents:
                if spec.action_type != action_type:
                    continue
                agent = self.agents[spec.name]
                for method in ("threshold", "isotonic"):
                    out[method][spec.name] = recommend_for(
                        action_type, agent_id=agent.pk, method=method, evidence=evidence
                    ).threshold
                out["joint"][spec.name] = joint.bars.get(agent.pk)
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
        production."""
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
        for i, spec in enumerate(self._stream(cfg.warmup), start=1):
            self.act(spec, warm[spec.name], drifted=False)
            if i % cfg.review_every == 0:
                self.review()
        self.review()
        self.log(f"warm-up: {cfg.warmup} actions per agent, all reviewed")
        recs = self.recommend()
        for spec in cfg.agents:
            self._apply(spec, recs[cfg.method][spec.name])
        clear_cache()
        # Arm the drift monitors on the warm-up evidence.
        ids = [a.pk for a in self.agents.values()]
        check_drift(self.rule, agent_ids=ids)

        before = {s.name: Tally() for s in cfg.agents}  # no drift (yet)
        after = {s.name: Tally() for s in cfg.agents}  # drifted
        seen = {s.name: 0 for s in cfg.agents}
        of_type = {s.action_type: 0 for s in cfg.agents}
        drift_start: dict[str, int] = {}  # drifting agent -> its type's count at the start
        detected: dict[str, int | None] = {}
        false_alerts: list[tuple[str, int]] = []
        alerted: set[str] = set()
        drifting_types: set[str] = set()
        for i, spec in enumerate(self._stream(cfg.actions), start=1):
            drifted = spec.drift_after is not None and seen[spec.name] >= spec.drift_after
            if drifted and spec.name not in drift_start:
                drift_start[spec.name] = of_type[spec.action_type]
                drifting_types.add(spec.action_type)
            # "Before": while no agent of the type drifts (the mix its bars were set for).
            tally = (after if spec.action_type in drifting_types else before)[spec.name]
            self.act(spec, tally, drifted=drifted)
            seen[spec.name] += 1
            of_type[spec.action_type] += 1
            if i % cfg.review_every == 0:
                self.review()
            if i % cfg.check_every == 0:
                check_drift(self.rule, agent_ids=ids)
                for name in self._alerted() - alerted:
                    alerted.add(name)
                    s = next(a for a in cfg.agents if a.name == name)
                    if name in drift_start:
                        detected[name] = of_type[s.action_type] - drift_start[name]
                    else:
                        false_alerts.append((name, i))
        self.review()
        for s in cfg.agents:
            if s.drift_after is not None and s.name not in detected:
                detected[s.name] = None
        return {
            "config": cfg,
            "recommendations": recs,
            "warmup": warm,
            "before": before,
            "after": after,
            "detected": detected,
            "false_alerts": false_alerts,
            # Every action of an agent that never drifts, and the drifting one's before it did.
            "no_drift_actions": sum(
                before[s.name].actions + (after[s.name].actions if s.drift_after is None else 0)
                for s in cfg.agents
            ),
            "per_type": self._per_type(before, recs[cfg.method]),
            "drifting": {
                s.name: _drift_effect(s, before[s.name], after[s.name])
                for s in cfg.agents
                if s.drift_after is not None
            },
        }

    def _alerted(self) -> set[str]:
        return set(
            DriftMonitor.objects.filter(
                agent__in=self.agents.values(), alerted_at__isnull=False
            ).values_list("agent__name", flat=True)
        )

    def _per_type(
        self, before: dict[str, Tally], bars: dict[str, float | None]
    ) -> list[dict[str, Any]]:
        rows = []
        for action_type in sorted({s.action_type for s in self.config.agents}):
            names = [s.name for s in self.config.agents if s.action_type == action_type]
            tallies = [before[n] for n in names]
            n = sum(t.actions for t in tallies)
            alone = sum(t.alone for t in tallies)
            expected = sum(t.alone_p for t in tallies) / alone if alone else 0.0
            truths = [p for t in tallies for p in t.truths]
            oracle = oracle_autonomy(truths, expected)
            rows.append(
                {
                    "action_type": action_type,
                    "actions": n,
                    "autonomy": alone / n if n else 0.0,
                    "error": sum(t.alone_wrong for t in tallies) / alone if alone else 0.0,
                    "expected_error": expected,
                    "target": target_for(action_type).target,
                    "oracle_autonomy": oracle,
                    "decisions": sum(t.decisions for t in tallies),
                    "audits": sum(t.audits for t in tallies),
                    "bars": {nm: bars[nm] for nm in names},
                }
            )
        return rows


def _drift_effect(spec: SimAgent, before: Tally, after: Tally) -> dict[str, float]:
    """The drifting agent's true autonomous error before and after its drift started."""
    return {
        "before": before.alone_p / before.alone if before.alone else math.nan,
        "after": after.alone_p / after.alone if after.alone else math.nan,
    }


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
    """Every recommender's bars from the same warm-up evidence, scored analytically on a
    fresh sample of the true curves: autonomy, the true error of what would run alone, and
    the oracle's autonomy at that error."""
    rows = []
    for action_type in sorted({s.action_type for s in config.agents}):
        specs = [s for s in config.agents if s.action_type == action_type]
        rng = random.Random(config.seed + 99)
        stream = [(s, rng.betavariate(s.a, s.b)) for s in specs for _ in range(config.score_sample)]
        truths = [s.p_wrong(c) for s, c in stream]
        for method in METHODS:
            bars = {s.name: result["recommendations"][method][s.name] for s in specs}
            alone = [
                s.p_wrong(c)
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


def tradeoff_config(config: Config, rate: float, horizon: int = 2000) -> Config:
    """The drifting agent's type alone, at audit rate `rate`, run `horizon` actions of the
    type past the drift's start."""
    drifting = next(s for s in config.agents if s.drift_after is not None)
    agents = tuple(s for s in config.agents if s.action_type == drifting.action_type)
    per_agent = (drifting.drift_after or 0) + horizon // len(agents)
    return replace(config, audit_rate=rate, agents=agents, actions=per_agent)
