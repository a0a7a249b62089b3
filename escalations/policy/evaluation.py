"""Evaluating one proposed action: may it run alone? Pure reads; nothing here writes.

Every covering policy is held against the action and the most restrictive wins; see
`models.POLICY_PRECEDENCE` for how policies combine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workflows.gate import Guard
from workflows.models import Action, PolicyOutcome
from workflows.tools import ActionType, get_action_type

from ..models import AgentProfile, TrustLevel
from .compiled import AgentState, CompiledPolicy, PolicySet, current_policy_set

_SEVERITY = {PolicyOutcome.AUTO: 0, PolicyOutcome.REVIEW: 1, PolicyOutcome.BLOCK: 2}
_ADVISORY_LOCK_NAMESPACE = 4_4_0_1  # pg_advisory_xact_lock(namespace, agent_id): rate caps


@dataclass(frozen=True)
class PolicyDecision:
    outcome: PolicyOutcome
    reasons: list[str]
    policy_id: int | None
    policy_version: int | None
    team_id: int
    approvals_required: int = 1
    policies_considered: int = 0
    # The chance an action allowed to run alone is sampled for a person to judge (audit).
    audit_rate: float = 0.0
    # Reached from the cached policies unchecked: holds while they are current.
    guard: Guard | None = None


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
    reversible: bool,
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
    if policy.irreversible_requires_review and not reversible:
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
    declared_irreversible: bool = False,
) -> PolicyDecision:
    """Hold one proposed action against every policy covering it; most restrictive wins.

    Risk comes from the declared action type; `declared_irreversible` (an agent calling its
    own call irreversible, through the API) is believed, as it can only cost a review.

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
        "reversible": tool.reversible and not declared_irreversible,
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
        audit_rate=effective_audit_rate(policy, moment) if outcome == PolicyOutcome.AUTO else 0.0,
    )


AUDIT_NEW_FOR = timedelta(days=14)


def effective_audit_rate(policy: CompiledPolicy, now: datetime) -> float:
    """The policy's audit rate; unset, settings.AUDIT_RATE (2%), or AUDIT_RATE_NEW (10%)
    while its bar is new or just changed."""
    if policy.audit_rate is not None:
        return policy.audit_rate
    if policy.updated_at is not None and now - policy.updated_at < AUDIT_NEW_FOR:
        return float(settings.AUDIT_RATE_NEW)
    return float(settings.AUDIT_RATE)
