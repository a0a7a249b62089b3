"""A graded risk for an escalation, from the policy's own inputs: what is at stake in money,
whether it can be undone, whether a customer sees it, and how far the agent's confidence
fell short of the bar that applied. Never from what the model says about its own action.

Graded when the escalation is opened and stored on it, so the queue filters and orders on
a column (and a policy edited later does not regrade what is already waiting).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.db import models

from workflows.tools import ActionType


class RiskLevel(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# Most severe first: the order the queue's risk filter lists them in.
RISK_ORDER = (RiskLevel.CRITICAL, RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW)

# An escalation without an SLA is still due: this long after it was raised, by risk. The
# queue orders by the SLA when there is one and by this otherwise, so a routing or a CRM
# update without an SLA moves up as it ages instead of sinking under every newer SLA'd row.
# Of the scale of the demo's SLAs (30-60 min), so neither kind starves the other.
DUE_WITHOUT_SLA = {
    RiskLevel.CRITICAL: timedelta(minutes=10),
    RiskLevel.HIGH: timedelta(minutes=30),
    RiskLevel.MEDIUM: timedelta(minutes=60),
    RiskLevel.LOW: timedelta(minutes=120),
}

LARGE_AMOUNT = Decimal(200)
HUGE_AMOUNT = Decimal(1000)


def risk_score(
    *,
    tool: ActionType | None,
    amount: Decimal | None,
    max_amount: Decimal | None,
    confidence: float,
    bar: float | None,
) -> int:
    if tool is None:
        return 4  # an undeclared type: nobody said what it does
    score = 0
    if not tool.reversible:
        score += 2
    if tool.customer_facing:
        score += 1
    if amount is not None and amount > 0:
        if amount >= HUGE_AMOUNT:
            score += 3
        elif amount > LARGE_AMOUNT or (max_amount is not None and amount > max_amount):
            score += 2
        else:
            score += 1
    if bar is None:
        score += 1  # no policy set a bar: nobody vouched for this confidence
    else:
        gap = bar - confidence
        if gap >= 0.3:
            score += 2
        elif gap >= 0.1:
            score += 1
    return score


def grade(score: int) -> RiskLevel:
    if score >= 6:
        return RiskLevel.CRITICAL
    if score >= 4:
        return RiskLevel.HIGH
    if score >= 2:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


def grade_risk(
    *,
    tool: ActionType | None,
    amount: Decimal | None,
    max_amount: Decimal | None,
    confidence: float,
    bar: float | None,
) -> RiskLevel:
    return grade(
        risk_score(tool=tool, amount=amount, max_amount=max_amount, confidence=confidence, bar=bar)
    )
