"""The gate that applies: for one agent, action type and trust level, which clause of which
policy decides whether the agent may act alone, and at what confidence.

Several policies can cover an action and the most restrictive wins (models.POLICY_PRECEDENCE),
so the number an admin edits on one policy may do nothing: "Customer replies are reviewed:
act alone 0.85" never decides a reply, because the same policy's irreversible clause sends
every reply to review unless a trusted agent is at least 0.97 confident. This module works
that out from the compiled policies, the same ones `policy.evaluate` reads, without any
action: the admin page of a policy and the metrics dashboard show it, and the numbers that
decide nothing are named as such. tests/escalations/test_gates.py holds it to evaluate().
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workflows.models import PolicyOutcome
from workflows.tools import ACTION_TYPES, ActionType

from ..models import TrustLevel
from .compiled import AgentState, CompiledPolicy, PolicySet

TRUST_LEVELS = (TrustLevel.PROBATION, TrustLevel.STANDARD, TrustLevel.TRUSTED)


@dataclass(frozen=True)
class Clause:
    policy: CompiledPolicy
    text: str
    # The confidence this clause asks for; None for a clause that decides regardless.
    threshold: float | None = None
    field: str = ""  # the policy's field an admin edits for it

    @property
    def label(self) -> str:
        return f"{self.policy.label}: {self.text}"


@dataclass(frozen=True)
class Gate:
    action_type: str
    agent: str
    agent_id: int
    trust_level: str
    current: bool  # the agent is at this trust level now
    # What an action gets whatever its confidence; AUTO: alone at `threshold` and above.
    outcome: PolicyOutcome
    threshold: float | None
    deciding: Clause | None
    inert: tuple[Clause, ...] = ()  # thresholds that decide nothing here
    conditions: tuple[str, ...] = ()  # what else sends it to review (or blocks it)
    paused: bool = False

    @property
    def summary(self) -> str:
        if self.paused:
            return "reviewed: the agent's autonomy is paused (kill switch)"
        if self.deciding is None:
            return f"reviewed: no policy covers {self.action_type}"
        if self.outcome == PolicyOutcome.BLOCK:
            return "blocked"
        if self.outcome == PolicyOutcome.REVIEW:
            return "always reviewed"
        assert self.threshold is not None
        if self.threshold > 1:
            return "always reviewed (no confidence reaches the bar)"
        return f"acts alone at confidence ≥ {self.threshold:.2f}"


@dataclass
class _PolicyTerms:
    outcome: PolicyOutcome
    clause: Clause | None = None  # deciding clause for BLOCK/REVIEW
    thresholds: list[Clause] = field(default_factory=list)
    inert: list[Clause] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)


def _bar_clause(policy: CompiledPolicy, level: str) -> Clause:
    bar = policy.bar_for(level)
    if level == TrustLevel.PROBATION and policy.min_confidence_probation is not None:
        return Clause(
            policy, f"act alone at {bar:.2f} on probation", bar, "min_confidence_probation"
        )
    if level == TrustLevel.TRUSTED and policy.min_confidence_trusted is not None:
        return Clause(policy, f"act alone at {bar:.2f} when trusted", bar, "min_confidence_trusted")
    return Clause(policy, f"act alone at {bar:.2f}", bar, "min_confidence")


def _terms(policy: CompiledPolicy, tool: ActionType, level: str) -> _PolicyTerms:
    name = tool.name
    if policy.outcome == PolicyOutcome.BLOCK:
        return _PolicyTerms(PolicyOutcome.BLOCK, Clause(policy, f"blocks {name}", field="outcome"))
    conditions = [
        f"blocked when the payload matches '{source}' ({policy.label})"
        for source, _ in policy.block_patterns
    ]
    if policy.outcome == PolicyOutcome.REVIEW:
        clause = Clause(policy, f"always reviews {name}", field="outcome")
        return _PolicyTerms(PolicyOutcome.REVIEW, clause, conditions=conditions)
    conditions += [
        f"reviewed when the payload matches '{source}' ({policy.label})"
        for source, _ in policy.review_patterns
    ]
    if policy.max_amount is not None and tool.amount_field is not None:
        conditions.append(
            f"reviewed when {tool.amount_field} is over {policy.max_amount} or missing "
            f"({policy.label})"
        )
    if policy.rate_limit_count is not None and policy.rate_limit_window:
        minutes = int(policy.rate_limit_window.total_seconds() // 60)
        conditions.append(
            f"reviewed after {policy.rate_limit_count} alone in {minutes} min ({policy.label})"
        )
    bar = _bar_clause(policy, level)
    if policy.irreversible_requires_review and not tool.reversible:
        strict = policy.irreversible_trusted_min_confidence
        if strict is None:
            clause = Clause(
                policy,
                f"{name} is irreversible: always reviewed",
                field="irreversible_requires_review",
            )
            return _PolicyTerms(PolicyOutcome.REVIEW, clause, inert=[bar], conditions=conditions)
        if level != TrustLevel.TRUSTED:
            clause = Clause(
                policy,
                f"irreversible → only a trusted agent at ≥ {strict:.2f} acts alone",
                field="irreversible_trusted_min_confidence",
            )
            return _PolicyTerms(PolicyOutcome.REVIEW, clause, inert=[bar], conditions=conditions)
        irreversible = Clause(
            policy,
            f"irreversible → trusted ≥ {strict:.2f}",
            strict,
            "irreversible_trusted_min_confidence",
        )
        return _PolicyTerms(
            PolicyOutcome.AUTO, thresholds=[bar, irreversible], conditions=conditions
        )
    return _PolicyTerms(PolicyOutcome.AUTO, thresholds=[bar], conditions=conditions)


def gate_for(
    policy_set: PolicySet, *, workflow: str, agent: AgentState, action_type: str, level: str
) -> Gate:
    """The gate for `agent` (as if at trust `level`) proposing `action_type` in `workflow`."""
    tool = ACTION_TYPES[action_type]
    covering = policy_set.covering(workflow=workflow, agent_id=agent.id, action_type=action_type)

    def gate(**decided: Any) -> Gate:
        return Gate(
            action_type=action_type,
            agent=agent.name,
            agent_id=agent.id,
            trust_level=level,
            current=agent.trust_level == level,
            paused=agent.paused,
            **decided,
        )

    if not covering:
        return gate(outcome=PolicyOutcome.REVIEW, threshold=None, deciding=None)
    terms = [_terms(p, tool, level) for p in covering]
    conditions = tuple(c for t in terms for c in t.conditions)
    every_threshold = [c for t in terms for c in t.thresholds]
    for outcome in (PolicyOutcome.BLOCK, PolicyOutcome.REVIEW):
        deciding = [t for t in terms if t.outcome == outcome]
        if deciding:
            # Covering is highest priority first: the first one is the one recorded.
            inert = tuple(c for t in terms for c in t.inert) + tuple(every_threshold)
            return gate(
                outcome=outcome,
                threshold=None,
                deciding=deciding[0].clause,
                inert=inert,
                conditions=() if outcome == PolicyOutcome.BLOCK else conditions,
            )
    top = max(c.threshold or 0.0 for c in every_threshold)
    winner = next(c for c in every_threshold if (c.threshold or 0.0) == top)
    inert = tuple(c for c in every_threshold if (c.threshold or 0.0) < top)
    return gate(
        outcome=PolicyOutcome.AUTO,
        threshold=top,
        deciding=winner,
        inert=inert,
        conditions=conditions,
    )


@dataclass(frozen=True)
class GateRow:
    """One agent and action type, at every trust level (the agent's own marked)."""

    agent: str
    action_type: str
    gates: tuple[Gate, ...]

    @property
    def current(self) -> Gate:
        return next((g for g in self.gates if g.current), self.gates[1])

    @property
    def conditions(self) -> list[str]:
        """What else sends it to review or blocks it, at any trust level (said once)."""
        return list(dict.fromkeys(c for g in self.gates for c in g.conditions))


def gate_rows(
    policy_set: PolicySet,
    *,
    workflow: str = "",
    agent_ids: Iterable[int] | None = None,
    action_types: Iterable[str] | None = None,
) -> list[GateRow]:
    agents = sorted(policy_set.agents.values(), key=lambda a: a.name)
    if agent_ids is not None:
        wanted = set(agent_ids)
        agents = [a for a in agents if a.id in wanted]
    types = sorted(action_types if action_types is not None else ACTION_TYPES)
    return [
        GateRow(
            agent=agent.name,
            action_type=t,
            gates=tuple(
                gate_for(policy_set, workflow=workflow, agent=agent, action_type=t, level=level)
                for level in TRUST_LEVELS
            ),
        )
        for agent in agents
        for t in types
        if t in ACTION_TYPES
    ]


def idle_numbers(policy: CompiledPolicy, rows: Iterable[GateRow]) -> list[str]:
    """The confidence bars of `policy` that decide no gate in `rows`: editing them changes
    nothing an agent does today (for any agent, action type or trust level shown)."""
    seen: dict[str, Clause] = {}
    deciding: set[str] = set()
    for row in rows:
        for gate in row.gates:
            if gate.deciding is not None and gate.deciding.policy.id == policy.id:
                deciding.add(gate.deciding.field)
            for clause in gate.inert:
                if clause.policy.id == policy.id and clause.threshold is not None:
                    seen.setdefault(clause.field, clause)
    return [
        f"{name} = {clause.threshold:.2f} decides nothing today: for every agent, action "
        "type and trust level below a stricter clause decides (see 'decided by')"
        for name, clause in seen.items()
        if name not in deciding and clause.threshold is not None
    ]
