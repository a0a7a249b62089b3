"""Policy evaluation: may this action run alone? Pure reads; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflows.models import PolicyOutcome
from workflows.tools import get_action_type

from .models import AgentProfile, AutonomyPolicy

_SEVERITY = {PolicyOutcome.AUTO: 0, PolicyOutcome.REVIEW: 1, PolicyOutcome.BLOCK: 2}


@dataclass(frozen=True)
class PolicyDecision:
    outcome: PolicyOutcome
    reasons: list[str]
    policy_id: int | None
    policy_version: int | None
    team_id: int


def _verdict(
    policy: AutonomyPolicy, *, agent: AgentProfile, action_type: str, confidence: float
) -> tuple[PolicyOutcome, list[str]]:
    label = f"policy '{policy.name}' v{policy.version}"
    if policy.outcome == PolicyOutcome.BLOCK:
        return PolicyOutcome.BLOCK, [f"{label} blocks {action_type}"]
    if policy.outcome == PolicyOutcome.REVIEW:
        return PolicyOutcome.REVIEW, [f"{label} always requires review of {action_type}"]
    reasons: list[str] = []
    if confidence < policy.min_confidence:
        reasons.append(
            f"confidence {confidence:.2f} < {policy.min_confidence:.2f} required for "
            f"{action_type} at trust '{agent.trust_level}' ({label})"
        )
    if policy.irreversible_requires_review and not get_action_type(action_type).reversible:
        reasons.append(f"{action_type} is irreversible and {label} requires review of those")
    if reasons:
        return PolicyOutcome.REVIEW, reasons
    return PolicyOutcome.AUTO, [
        f"confidence {confidence:.2f} >= {policy.min_confidence:.2f} ({label})"
    ]


def evaluate(
    *,
    agent: AgentProfile,
    workflow: str,
    action_type: str,
    confidence: float,
    payload: dict[str, Any] | None = None,
) -> PolicyDecision:
    """Most restrictive wins; the highest-priority policy giving that outcome is recorded."""
    policies = [
        p
        for p in AutonomyPolicy.objects.filter(enabled=True).order_by("-priority", "id")
        if p.covers(workflow=workflow, agent_id=agent.pk, action_type=action_type)
    ]
    if not policies:
        return PolicyDecision(
            outcome=PolicyOutcome.REVIEW,
            reasons=[f"no autonomy policy covers {action_type}; review is the default"],
            policy_id=None,
            policy_version=None,
            team_id=agent.team_id,
        )
    verdicts = [
        (p, *_verdict(p, agent=agent, action_type=action_type, confidence=confidence))
        for p in policies
    ]
    worst = max(_SEVERITY[PolicyOutcome(v[1])] for v in verdicts)
    winners = [v for v in verdicts if _SEVERITY[PolicyOutcome(v[1])] == worst]
    policy, outcome, _ = winners[0]
    reasons = [r for _, _, rs in winners for r in rs]
    if agent.autonomy_paused and outcome == PolicyOutcome.AUTO:
        outcome = PolicyOutcome.REVIEW
        reasons = [f"autonomy is paused for agent '{agent.name}' (kill switch)"]
    return PolicyDecision(
        outcome=PolicyOutcome(outcome),
        reasons=reasons,
        policy_id=policy.pk,
        policy_version=policy.version,
        team_id=policy.team_id or agent.team_id,
    )
