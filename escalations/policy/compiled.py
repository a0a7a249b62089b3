"""Policies compiled for evaluation, and the per-process cache of them.

Evaluation runs on every proposed action, so the enabled policies and the agents' trust and
kill-switch state are compiled once into an immutable `PolicySet` and cached per process.
The database keeps a stamp that its own triggers rewrite on any change to policies or agent
profiles (migration 0006); each evaluation reads that one row and recompiles when it moved,
so a change made anywhere is seen everywhere on the next evaluation — which is also what
makes the kill switch immediate.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection

from workflows.models import PolicyOutcome

from ..models import AgentProfile, AutonomyPolicy, TrustLevel


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
    audit_rate: float | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, p: AutonomyPolicy) -> CompiledPolicy:
        """Compile a policy, or one of its historical versions (they have the same fields):
        the fields named alike are copied as they are, the rest derived below."""
        window = p.rate_limit_window_minutes
        copied = {name: getattr(p, name) for name in _COPIED}
        return cls(
            **copied,
            outcome=PolicyOutcome(p.outcome),
            review_patterns=_patterns(p.review_patterns),
            block_patterns=_patterns(p.block_patterns),
            rate_limit_count=p.rate_limit_count if window else None,
            rate_limit_window=timedelta(minutes=window) if window else None,
            chain_slugs=tuple(s.strip() for s in p.escalation_chain.split(",") if s.strip()),
            approvals_required=max(p.approvals_required, 1),
        )

    @property
    def label(self) -> str:
        return f"policy '{self.name}' v{self.version}"

    @property
    def sort_key(self) -> tuple[int, int]:
        # Unsaved drafts (what-if) sort after saved policies of the same priority.
        return (-self.priority, self.id if self.id is not None else 2**62)

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


# Fields CompiledPolicy takes from the policy unchanged; `of` derives the others.
_DERIVED = {
    "outcome",
    "review_patterns",
    "block_patterns",
    "rate_limit_count",
    "rate_limit_window",
    "chain_slugs",
    "approvals_required",
}
_COPIED = tuple(f.name for f in fields(CompiledPolicy) if f.name not in _DERIVED)


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


# True while the database stamp is still `%s`: the guard of a verdict reached from the cache
# unchecked (workflows.gate.Guard), checked in the statement that writes the action.
STAMP_UNMOVED = "EXISTS (SELECT 1 FROM escalations_policycachestamp WHERE id = 1 AND stamp = %s)"


def cached_policy_set() -> tuple[str, PolicySet] | None:
    """The compiled set this process holds and the stamp it was compiled at, without asking
    the database whether it is current: only for a caller that checks `STAMP_UNMOVED` with
    that stamp where it writes what it decided, and asks again if it moved. None: nothing
    cached yet."""
    return _cache.get(connection.alias)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


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


def current_threshold(action_type: str) -> float | None:
    """The confidence bar of the highest-precedence enabled AUTO policy naming this action
    type (what the calibration chart draws), read from the compiled set."""
    for policy in current_policy_set().by_type.get(action_type, ()):
        if policy.outcome == PolicyOutcome.AUTO:
            return policy.min_confidence
    return None
