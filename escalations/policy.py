"""Policy evaluation: may this action run alone? Pure reads; nothing here writes.

Evaluation runs on every proposed action, so the enabled policies and the agents' trust and
kill-switch state are compiled once into an immutable `PolicySet` and cached per process.
The database keeps a stamp that its own triggers rewrite on any change to policies or agent
profiles (migration 0006); each evaluation reads that one row and recompiles when it moved,
so a change made anywhere is seen everywhere on the next evaluation — which is also what
makes the kill switch immediate. See `models.POLICY_PRECEDENCE` for how policies combine.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from django.db import connection
from django.utils import timezone

from workflows.models import PolicyOutcome
from workflows.tools import ActionType, ToolError, get_action_type

from .models import AgentProfile, AutonomyPolicy, TrustLevel

_SEVERITY = {PolicyOutcome.AUTO: 0, PolicyOutcome.REVIEW: 1, PolicyOutcome.BLOCK: 2}
_ADVISORY_LOCK_NAMESPACE = 4_4_0_1  # pg_advisory_xact_lock(namespace, agent_id): rate caps


class PolicyLike(Protocol):
    """An AutonomyPolicy or one of its historical versions: both compile the same way."""

    id: int
    name: str
    version: int
    enabled: bool
    priority: int
    workflow: str
    agent_id: int | None
    action_type: str
    outcome: str
    min_confidence: float
    min_confidence_probation: float | None
    min_confidence_trusted: float | None
    max_amount: Decimal | None
    irreversible_requires_review: bool
    irreversible_trusted_min_confidence: float | None
    review_patterns: str
    block_patterns: str
    rate_limit_count: int | None
    rate_limit_window_minutes: int | None
    team_id: int | None
    sla_minutes: int | None
    escalation_chain: str
    expiry_behaviour: str
    expiry_team_id: int | None
    approvals_required: int
    approvals_required_above: Decimal | None


def _patterns(text: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    lines = (line.strip() for line in (text or "").splitlines())
    return tuple((line, re.compile(line, re.IGNORECASE)) for line in lines if line)


@dataclass(frozen=True)
class CompiledPolicy:
    id: int | None
    name: str
    version: int
    priority: int
    workflow: str
    agent_id: int | None
    action_type: str
    outcome: PolicyOutcome
    min_confidence: float
    min_confidence_probation: float | None
    min_confidence_trusted: float | None
    max_amount: Decimal | None
    irreversible_requires_review: bool
    irreversible_trusted_min_confidence: float | None
    review_patterns: tuple[tuple[str, re.Pattern[str]], ...]
    block_patterns: tuple[tuple[str, re.Pattern[str]], ...]
    rate_limit_count: int | None
    rate_limit_window: timedelta | None
    team_id: int | None
    sla_minutes: int | None
    chain_slugs: tuple[str, ...]
    expiry_behaviour: str
    expiry_team_id: int | None
    approvals_required: int
    approvals_required_above: Decimal | None

    @classmethod
    def of(cls, p: PolicyLike) -> CompiledPolicy:
        window = p.rate_limit_window_minutes
        return cls(
            id=p.id,
            name=p.name,
            version=p.version,
            priority=p.priority,
            workflow=p.workflow,
            agent_id=p.agent_id,
            action_type=p.action_type,
            outcome=PolicyOutcome(p.outcome),
            min_confidence=p.min_confidence,
            min_confidence_probation=p.min_confidence_probation,
            min_confidence_trusted=p.min_confidence_trusted,
            max_amount=p.max_amount,
            irreversible_requires_review=p.irreversible_requires_review,
            irreversible_trusted_min_confidence=p.irreversible_trusted_min_confidence,
            review_patterns=_patterns(p.review_patterns),
            block_patterns=_patterns(p.block_patterns),
            rate_limit_count=p.rate_limit_count if window else None,
            rate_limit_window=timedelta(minutes=window) if window else None,
            team_id=p.team_id,
            sla_minutes=p.sla_minutes,
            chain_slugs=tuple(s.strip() for s in p.escalation_chain.split(",") if s.strip()),
            expiry_behaviour=p.expiry_behaviour,
            expiry_team_id=p.expiry_team_id,
            approvals_required=max(p.approvals_required, 1),
            approvals_required_above=p.approvals_required_above,
        )

    @property
    def label(self) -> str:
        return f"policy '{self.name}' v{self.version}"

    @property
    def sort_key(self) -> tuple[int, int]:
        # Unsaved drafts (what-if) sort after saved policies of the same priority.
        return (-self.priority, self.id if self.id is not None else 2**62)

    def covers(self, *, workflow: str, agent_id: int, action_type: str) -> bool:
        return (
            (not self.workflow or self.workflow == workflow)
            and (self.agent_id is None or self.agent_id == agent_id)
            and (not self.action_type or self.action_type == action_type)
        )

    def bar_for(self, trust_level: str) -> float:
        if trust_level == TrustLevel.PROBATION and self.min_confidence_probation is not None:
            return self.min_confidence_probation
        if trust_level == TrustLevel.TRUSTED and self.min_confidence_trusted is not None:
            return self.min_confidence_trusted
        return self.min_confidence

    def approvals_for(self, amount: Decimal | None) -> int:
        """Quorum applies always, or only above an amount (an unknown amount counts as above)."""
        if self.approvals_required <= 1 or self.approvals_required_above is None:
            return self.approvals_required
        if amount is not None and amount <= self.approvals_required_above:
            return 1
        return self.approvals_required


@dataclass(frozen=True)
class AgentState:
    id: int
    name: str
    trust_level: str
    paused: bool
    team_id: int


@dataclass(frozen=True)
class PolicySet:
    """Enabled policies indexed by action type ('' holds the any-type ones), and agents."""

    by_type: dict[str, tuple[CompiledPolicy, ...]]
    agents: dict[int, AgentState]
    size: int
    # (workflow, agent, action type) -> covering policies: few distinct keys, many lookups.
    _covering: dict[tuple[str, int, str], tuple[CompiledPolicy, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    by_id: dict[int, CompiledPolicy] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, policies: Iterable[CompiledPolicy], agents: Iterable[AgentState]) -> PolicySet:
        grouped: dict[str, list[CompiledPolicy]] = {}
        count = 0
        for p in policies:
            grouped.setdefault(p.action_type, []).append(p)
            count += 1
        return cls(
            by_type={k: tuple(sorted(v, key=lambda p: p.sort_key)) for k, v in grouped.items()},
            agents={a.id: a for a in agents},
            size=count,
            by_id={p.id: p for ps in grouped.values() for p in ps if p.id is not None},
        )

    def covering(
        self, *, workflow: str, agent_id: int, action_type: str
    ) -> tuple[CompiledPolicy, ...]:
        """Every policy whose scope matches, highest priority first."""
        key = (workflow, agent_id, action_type)
        found = self._covering.get(key)
        if found is None:
            candidates = self.by_type.get(action_type, ()) + self.by_type.get("", ())
            found = tuple(
                sorted(
                    (
                        p
                        for p in candidates
                        if (not p.workflow or p.workflow == workflow)
                        and (p.agent_id is None or p.agent_id == agent_id)
                    ),
                    key=lambda p: p.sort_key,
                )
            )
            if len(self._covering) > 50_000:
                self._covering.clear()
            self._covering[key] = found
        return found

    def replacing(self, draft: CompiledPolicy, *, enabled: bool) -> PolicySet:
        """This set with `draft` in place of the saved policy of the same id (what-if)."""
        policies = [
            p for ps in self.by_type.values() for p in ps if draft.id is None or p.id != draft.id
        ]
        if enabled:
            policies.append(draft)
        return PolicySet.build(policies, self.agents.values())


# --- the per-process cache ------------------------------------------------------------------

_cache_lock = threading.Lock()
_cache: dict[str, tuple[str, PolicySet]] = {}


def _read_stamp() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT stamp FROM escalations_policycachestamp WHERE id = 1")
        row = cursor.fetchone()
    return str(row[0]) if row else None


def compile_policy_set() -> PolicySet:
    """Read every enabled policy and every agent's state from the database, uncached."""
    policies = [CompiledPolicy.of(p) for p in AutonomyPolicy.objects.filter(enabled=True)]
    agents = [
        AgentState(id=a[0], name=a[1], trust_level=a[2], paused=a[3], team_id=a[4])
        for a in AgentProfile.objects.values_list(
            "id", "name", "trust_level", "autonomy_paused", "team_id"
        )
    ]
    return PolicySet.build(policies, agents)


def current_policy_set() -> PolicySet:
    """The compiled set, recompiled only when the database stamp moved."""
    alias = connection.alias
    stamp = _read_stamp()
    cached = _cache.get(alias)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    policy_set = compile_policy_set()
    # A change committed while compiling would otherwise be cached under the old stamp.
    if stamp is not None and _read_stamp() == stamp:
        with _cache_lock:
            _cache[alias] = (stamp, policy_set)
    return policy_set


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyDecision:
    outcome: PolicyOutcome
    reasons: list[str]
    policy_id: int | None
    policy_version: int | None
    team_id: int
    approvals_required: int = 1
    policies_considered: int = 0


def amount_of(tool: ActionType, payload: dict[str, Any]) -> Decimal | None:
    """The declared amount field's value, or None when absent or not a finite number."""
    if tool.amount_field is None:
        return None
    value = payload.get(tool.amount_field)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _texts(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > 8:
        return
    if isinstance(value, str):
        yield path or "payload", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _texts(v, f"{path}[{i}]", depth + 1)


def _first_match(
    patterns: tuple[tuple[str, re.Pattern[str]], ...], texts: list[tuple[str, str]]
) -> tuple[str, str] | None:
    for source, pattern in patterns:
        for where, text in texts:
            if pattern.search(text):
                return source, where
    return None


RecentCounter = Callable[[CompiledPolicy, int, datetime], int]


def count_recent_autonomous(policy: CompiledPolicy, agent_id: int, since: datetime) -> int:
    """Actions in `policy`'s scope that `agent_id` took alone since `since`.

    On PostgreSQL, inside a transaction, concurrent evaluations for the same agent queue on
    an advisory lock until the earlier one commits, so two racing actions cannot both slip
    under the cap.
    """
    from workflows.models import Action

    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [_ADVISORY_LOCK_NAMESPACE, agent_id]
            )
    qs = Action.objects.filter(agent_id=agent_id, outcome=PolicyOutcome.AUTO, created_at__gte=since)
    if policy.action_type:
        qs = qs.filter(action_type=policy.action_type)
    if policy.workflow:
        qs = qs.filter(run__workflow=policy.workflow)
    return qs.count()


def _verdict(
    policy: CompiledPolicy,
    *,
    agent: AgentState,
    tool: ActionType,
    confidence: float,
    amount: Decimal | None,
    texts: list[tuple[str, str]],
    now: datetime,
    count_recent: RecentCounter,
    explain: bool,
) -> tuple[PolicyOutcome, list[str]]:
    """One policy's outcome, and with `explain` its reasons (a person can read each alone).

    Evaluation runs this twice: first without reasons for every covering policy (formatting
    hundreds of strings would dominate the hot path), then with them for the winners only.
    """
    name, label = tool.name, policy.label if explain else ""
    if policy.outcome == PolicyOutcome.BLOCK:
        return PolicyOutcome.BLOCK, [f"{label} blocks {name}"] if explain else []
    hit = _first_match(policy.block_patterns, texts) if policy.block_patterns else None
    if hit:
        return PolicyOutcome.BLOCK, [
            f"payload field '{hit[1]}' matches block pattern '{hit[0]}' ({label})"
        ] if explain else []
    hit = _first_match(policy.review_patterns, texts) if policy.review_patterns else None
    if hit:
        return PolicyOutcome.REVIEW, [
            f"payload field '{hit[1]}' matches review pattern '{hit[0]}' ({label})"
        ] if explain else []
    if policy.outcome == PolicyOutcome.REVIEW:
        return PolicyOutcome.REVIEW, [
            f"{label} always requires review of {name}"
        ] if explain else []

    failed = 0
    reasons: list[str] = []
    passed: list[str] = []
    bar = policy.bar_for(agent.trust_level)
    if confidence < bar:
        failed += 1
        if explain:
            reasons.append(
                f"confidence {confidence:.2f} < {bar:.2f} required for {name} at trust "
                f"'{agent.trust_level}' ({label})"
            )
    elif explain:
        passed.append(
            f"confidence {confidence:.2f} >= {bar:.2f} required for {name} at trust "
            f"'{agent.trust_level}' ({label})"
        )
    if policy.max_amount is not None and tool.amount_field is not None:
        if amount is None:
            failed += 1
            if explain:
                reasons.append(
                    f"{name} has no numeric '{tool.amount_field}', and {label} lets it act "
                    f"alone only up to {policy.max_amount}"
                )
        elif amount > policy.max_amount:
            failed += 1
            if explain:
                reasons.append(
                    f"{tool.amount_field} {amount} > {policy.max_amount}, the most {name} may "
                    f"move alone ({label})"
                )
        elif explain:
            passed.append(f"{tool.amount_field} {amount} <= {policy.max_amount} ({label})")
    if policy.irreversible_requires_review and not tool.reversible:
        strict = policy.irreversible_trusted_min_confidence
        if strict is not None and agent.trust_level == TrustLevel.TRUSTED and confidence >= strict:
            if explain:
                passed.append(
                    f"irreversible {name} may act alone: agent '{agent.name}' is trusted and "
                    f"confidence {confidence:.2f} >= {strict:.2f} ({label})"
                )
        else:
            failed += 1
            if explain:
                unless = (
                    f" unless a trusted agent is at least {strict:.2f} confident"
                    if strict is not None
                    else ""
                )
                reasons.append(
                    f"{name} is irreversible and {label} requires review of those{unless}"
                )
    if not failed and policy.rate_limit_count is not None and policy.rate_limit_window:
        recent = count_recent(policy, agent.id, now - policy.rate_limit_window)
        if recent >= policy.rate_limit_count:
            failed += 1
            if explain:
                minutes = int(policy.rate_limit_window.total_seconds() // 60)
                scope = policy.action_type or "in-scope"
                reasons.append(
                    f"rate cap reached: agent '{agent.name}' already took {recent} {scope} "
                    f"action(s) alone in the last {minutes} min (cap {policy.rate_limit_count}, "
                    f"{label})"
                )
    if failed:
        return PolicyOutcome.REVIEW, reasons
    return PolicyOutcome.AUTO, passed


def evaluate(
    *,
    agent: AgentProfile,
    workflow: str,
    action_type: str,
    confidence: float,
    payload: dict[str, Any] | None = None,
    now: datetime | None = None,
    policy_set: PolicySet | None = None,
    count_recent: RecentCounter | None = None,
    apply_kill_switch: bool = True,
) -> PolicyDecision:
    """Hold one proposed action against every policy covering it; most restrictive wins.

    `policy_set`, `count_recent` and `apply_kill_switch` exist for what-if previews; the
    live path leaves them alone.
    """
    tool = get_action_type(action_type)
    if not isinstance(confidence, int | float) or math.isnan(confidence):
        raise ValueError(f"confidence must be a number, not {confidence!r}")
    payload = payload if isinstance(payload, dict) else {}
    policies = policy_set if policy_set is not None else current_policy_set()
    # The compiled state is at least as fresh as the caller's object: the kill switch and a
    # trust change apply from the very next evaluation, even in a run that loaded its agent
    # long ago.
    state = policies.agents.get(agent.pk) or AgentState(
        id=agent.pk,
        name=agent.name,
        trust_level=agent.trust_level,
        paused=agent.autonomy_paused,
        team_id=agent.team_id,
    )
    covering = policies.covering(workflow=workflow, agent_id=agent.pk, action_type=tool.name)
    if not covering:
        return PolicyDecision(
            outcome=PolicyOutcome.REVIEW,
            reasons=[f"no autonomy policy covers {tool.name}; review is the default"],
            policy_id=None,
            policy_version=None,
            team_id=state.team_id,
        )
    amount = amount_of(tool, payload)
    texts = (
        list(_texts(payload))
        if any(p.review_patterns or p.block_patterns for p in covering)
        else []
    )
    moment = now or timezone.now()
    counter = count_recent or count_recent_autonomous
    considered = len(covering)
    counts: dict[int | None, int] = {}

    def count_once(policy: CompiledPolicy, agent_id: int, since: datetime) -> int:
        # The explaining pass must quote the number the deciding pass saw, without a query.
        if policy.id not in counts:
            counts[policy.id] = counter(policy, agent_id, since)
        return counts[policy.id]

    kwargs: dict[str, Any] = {
        "agent": state,
        "tool": tool,
        "confidence": float(confidence),
        "amount": amount,
        "texts": texts,
        "now": moment,
        "count_recent": count_once,
    }
    if any(p.outcome == PolicyOutcome.BLOCK for p in covering):
        # Nothing is stricter than a block: only what can block needs evaluating.
        covering = tuple(
            p for p in covering if p.outcome == PolicyOutcome.BLOCK or p.block_patterns
        )
    severities = [_SEVERITY[_verdict(p, explain=False, **kwargs)[0]] for p in covering]
    worst = max(severities)
    winners = [p for p, sev in zip(covering, severities, strict=True) if sev == worst]
    policy = winners[0]
    outcome = next(o for o, sev in _SEVERITY.items() if sev == worst)
    if outcome == PolicyOutcome.AUTO:
        # Every covering policy allows it; the recorded one says why, the rest are counted.
        reasons = _verdict(policy, explain=True, **kwargs)[1]
        if len(winners) > 1:
            reasons.append(f"{len(winners) - 1} other matching policies allow it too")
    else:
        reasons = [r for p in winners for r in _verdict(p, explain=True, **kwargs)[1]]
    if apply_kill_switch and state.paused and outcome == PolicyOutcome.AUTO:
        outcome = PolicyOutcome.REVIEW
        reasons = [f"autonomy is paused for agent '{state.name}' (kill switch)"]
    return PolicyDecision(
        outcome=outcome,
        reasons=reasons,
        policy_id=policy.id,
        policy_version=policy.version,
        team_id=policy.team_id or state.team_id,
        approvals_required=policy.approvals_for(amount) if outcome == PolicyOutcome.REVIEW else 1,
        policies_considered=considered,
    )


def policy_as_evaluated(policy_id: int | None, version: int | None) -> CompiledPolicy | None:
    """The policy exactly as it was at `version` (from its history), for routing and display."""
    if policy_id is None:
        return None
    if version is not None:
        # Nearly always the version this process just evaluated: every change through
        # save_policy is a new version, so the compiled one at that version is the same policy.
        cached = _cache.get(connection.alias)
        compiled = cached[1].by_id.get(policy_id) if cached is not None else None
        if compiled is not None and compiled.version == version:
            return compiled
        historical = (
            AutonomyPolicy.history.filter(id=policy_id, version=version)
            .order_by("-history_id")
            .first()
        )
        if historical is not None:
            return CompiledPolicy.of(historical)
    current = AutonomyPolicy.objects.filter(pk=policy_id).first()
    return CompiledPolicy.of(current) if current is not None else None


# --- what-if ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIfExample:
    action_id: str
    action_type: str
    agent: str
    confidence: float
    before: PolicyOutcome
    after: PolicyOutcome
    reasons_after: list[str]


@dataclass
class WhatIfReport:
    """How the last `total` recorded actions would be decided with and without the draft."""

    total: int = 0
    skipped: int = 0
    counts: dict[tuple[PolicyOutcome, PolicyOutcome], int] = field(default_factory=dict)
    examples: dict[tuple[PolicyOutcome, PolicyOutcome], list[WhatIfExample]] = field(
        default_factory=dict
    )

    @property
    def moved(self) -> int:
        return sum(n for (b, a), n in self.counts.items() if b != a)

    @property
    def transitions(self) -> list[dict[str, Any]]:
        """Every (before, after) pair that changed, biggest first, with its examples."""
        rows = [
            {
                "before": b,
                "after": a,
                "count": n,
                "stricter": _SEVERITY[a] > _SEVERITY[b],
                "examples": self.examples.get((b, a), []),
            }
            for (b, a), n in self.counts.items()
            if b != a
        ]
        return sorted(rows, key=lambda r: -int(r["count"]))

    @property
    def matrix(self) -> list[dict[str, Any]]:
        outcomes = list(PolicyOutcome)
        return [
            {"before": b, "cells": [self.counts.get((b, a), 0) for a in outcomes]} for b in outcomes
        ]


class _ReplayCounter:
    """Rate caps during a replay: counts what *this scenario* let run alone, in order."""

    def __init__(self) -> None:
        self.alone: list[tuple[int, str, str, datetime]] = []

    def __call__(self, policy: CompiledPolicy, agent_id: int, since: datetime) -> int:
        return sum(
            1
            for a, t, w, at in self.alone
            if a == agent_id
            and at >= since
            and (not policy.action_type or t == policy.action_type)
            and (not policy.workflow or w == policy.workflow)
        )


def what_if(draft: AutonomyPolicy, *, limit: int = 500, examples_per_move: int = 5) -> WhatIfReport:
    """Replay the last `limit` recorded actions against today's policies and against today's
    policies with `draft` (unsaved; new or edited) in place, and count what moves.

    Both sides are evaluated now, so the difference is the draft's alone. The kill switch is
    left out (it would hide the policy's effect) and rate caps are replayed from what each
    side let run alone within the window.
    """
    from workflows.models import Action

    current = current_policy_set()
    compiled = CompiledPolicy.of(draft)
    proposed = current.replacing(compiled, enabled=draft.enabled)
    actions = list(
        Action.objects.select_related("agent", "run").order_by("-created_at")[: max(limit, 0)]
    )
    actions.reverse()
    report = WhatIfReport()
    counters = (_ReplayCounter(), _ReplayCounter())
    for action in actions:
        workflow = action.run.workflow if action.run is not None else ""
        outcomes = []
        after_reasons: list[str] = []
        try:
            for side, (policy_set, counter) in enumerate(
                zip((current, proposed), counters, strict=True)
            ):
                decision = evaluate(
                    agent=action.agent,
                    workflow=workflow,
                    action_type=action.action_type,
                    confidence=action.confidence,
                    payload=action.payload,
                    now=action.created_at,
                    policy_set=policy_set,
                    count_recent=counter,
                    apply_kill_switch=False,
                )
                outcomes.append(decision.outcome)
                if decision.outcome == PolicyOutcome.AUTO:
                    counter.alone.append(
                        (action.agent_id, action.action_type, workflow, action.created_at)
                    )
                if side == 1:
                    after_reasons = decision.reasons
        except ToolError:
            # An action type no longer declared: nothing to say about it.
            report.skipped += 1
            continue
        before, after = outcomes
        report.total += 1
        report.counts[(before, after)] = report.counts.get((before, after), 0) + 1
        if before != after:
            shown = report.examples.setdefault((before, after), [])
            if len(shown) < examples_per_move:
                shown.append(
                    WhatIfExample(
                        action_id=str(action.pk),
                        action_type=action.action_type,
                        agent=action.agent.name,
                        confidence=action.confidence,
                        before=before,
                        after=after,
                        reasons_after=after_reasons,
                    )
                )
    return report
