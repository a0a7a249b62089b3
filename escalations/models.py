"""Teams, agent profiles, autonomy policies, escalations and the one decision each may get."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone
from simple_history.models import HistoricalRecords

from workflows.models import ActionStatus, PolicyOutcome
from workflows.tools import ACTION_TYPES

from .risk import RiskLevel


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams", blank=True)
    slack_channel = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TrustLevel(models.TextChoices):
    PROBATION = "probation"
    STANDARD = "standard"
    TRUSTED = "trusted"


class AgentProfile(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    agent_type = models.CharField(
        max_length=100, blank=True, help_text="What kind of agent, e.g. 'support triage'."
    )
    description = models.TextField(blank=True)
    team = models.ForeignKey(
        Team, on_delete=models.PROTECT, related_name="agents", help_text="The owner team."
    )
    trust_level = models.CharField(
        max_length=16, choices=TrustLevel.choices, default=TrustLevel.STANDARD
    )
    customer_facing = models.BooleanField(default=False)
    autonomy_paused = models.BooleanField(
        default=False,
        help_text="Kill switch: every action of this agent goes to review, from the next "
        "evaluation on; its approved-alone actions that have not run yet go to review too.",
    )
    autonomy_paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    autonomy_paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
    )
    autonomy_pause_reason = models.CharField(max_length=500, blank=True, editable=False)

    # Every change (trust level, kill switch) is kept with who made it and why.
    history = HistoricalRecords(excluded_fields=["description"])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


POLICY_PRECEDENCE = """\
Every enabled policy whose scope (workflow, agent, action type; blank = any) matches the action
is evaluated, whatever its priority. The most restrictive outcome wins: BLOCK over REVIEW over
AUTO. A policy gives BLOCK if its outcome is BLOCK or a block pattern matches the payload; REVIEW
if its outcome is REVIEW, a review pattern matches, or (outcome AUTO) any condition fails:
confidence under the bar for the agent's trust level, amount over the maximum, an irreversible
action, or the rate cap reached. An action no policy covers goes to review; a paused agent
(kill switch) never acts alone. Every reason from the policies giving the winning outcome is
shown to reviewers. Among those policies the highest priority one (then the oldest) is
recorded with its version and owns the escalation: its team (blank: the agent's team), SLA,
escalation chain, expiry behaviour and approvals required.\
"""


class ExpiryBehaviour(models.TextChoices):
    REJECT = "reject", "Reject the action"
    APPROVE = "approve", "Approve the action"
    REROUTE = "reroute", "Re-route to the expiry team (stays open, no further SLA)"


def _validate_patterns(value: str) -> None:
    for number, line in enumerate(value.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            re.compile(line.strip())
        except re.error as exc:
            raise ValidationError(f"line {number} is not a valid pattern: {exc}") from None


class AutonomyPolicy(models.Model):
    """When an agent may act alone, who reviews what it may not, and how fast.

    See POLICY_PRECEDENCE for how several matching policies combine.
    """

    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(
        default=100,
        help_text="Never overrides a stricter outcome: among the policies giving the winning "
        "outcome, the highest priority one is recorded and routes the escalation.",
    )
    # Scope.
    workflow = models.CharField(max_length=100, blank=True, help_text="Blank: any workflow.")
    agent = models.ForeignKey(
        AgentProfile, on_delete=models.CASCADE, null=True, blank=True, help_text="Blank: any."
    )
    action_type = models.CharField(max_length=100, blank=True, help_text="Blank: any type.")
    outcome = models.CharField(
        max_length=8,
        choices=PolicyOutcome.choices,
        help_text="'Act alone' still goes to review when a condition below fails.",
    )
    # Conditions to act alone.
    min_confidence = models.FloatField(
        default=0.8,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Below this confidence the action goes to review (trust 'standard', and any "
        "trust level without its own bar below).",
    )
    min_confidence_probation = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="The bar for agents on probation. Blank: the minimum confidence above.",
    )
    min_confidence_trusted = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="The bar for trusted agents. Blank: the minimum confidence above.",
    )
    max_amount = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Above this amount/cost (read from the action type's declared amount field) "
        "the action goes to review; a missing amount counts as over. Blank: no limit.",
    )
    irreversible_requires_review = models.BooleanField(
        default=True, help_text="Irreversible action types (as declared) go to review."
    )
    irreversible_trusted_min_confidence = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Except when the agent is trusted and its confidence is at least this "
        "stricter bar. Blank: no exception.",
    )
    review_patterns = models.TextField(
        blank=True,
        validators=[_validate_patterns],
        help_text="One regular expression (or plain keyword) per line, matched "
        "case-insensitively against every text value of the payload: a match sends the "
        "action to review.",
    )
    block_patterns = models.TextField(
        blank=True,
        validators=[_validate_patterns],
        help_text="Same, but a match blocks the action.",
    )
    rate_limit_count = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="At most this many actions in this policy's scope act alone per agent per "
        "window; past it they go to review. Blank: no cap.",
    )
    rate_limit_window_minutes = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="The cap's window."
    )
    # Routing of what this policy escalates.
    team = models.ForeignKey(
        Team,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Who reviews what this policy escalates. Blank: the agent's team.",
    )
    sla_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="How long each team in the chain has to decide. Blank: no SLA.",
    )
    escalation_chain = models.CharField(
        max_length=500,
        blank=True,
        help_text="Team slugs, comma-separated: who gets it next, in order, each time the SLA "
        "passes undecided.",
    )
    expiry_behaviour = models.CharField(
        max_length=8,
        choices=ExpiryBehaviour.choices,
        blank=True,
        help_text="What happens when the SLA passes at the end of the chain. Required with an "
        "SLA: never implicit.",
    )
    expiry_team = models.ForeignKey(
        Team,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Where 're-route' sends it.",
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="Distinct reviewers who must approve (quorum); one rejection ends it.",
    )
    approvals_required_above = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Ask for that many approvals only when the amount is above this. Blank: always.",
    )
    # Calibration: keeping the bar honest once it is in force.
    audit_rate = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of the actions this policy lets run alone that a person is asked to "
        "judge (after they run if reversible, before if not). Blank: 2%, or 10% for the first "
        "14 days after the policy is created or changed.",
    )
    tighten_on_drift = models.BooleanField(
        default=False,
        db_default=False,
        help_text="When an agent acting alone under this policy drifts (its errors at the same "
        "confidence rise), send every action of that agent and type to review at once, until "
        "a person looks.",
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-priority", "name"]
        verbose_name_plural = "autonomy policies"

    def __str__(self) -> str:
        return f"{self.name} (v{self.version})"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.action_type and self.action_type not in ACTION_TYPES:
            errors["action_type"] = (
                f"Unknown action type; declared: {', '.join(sorted(ACTION_TYPES))}."
            )
        if (self.rate_limit_count is None) != (self.rate_limit_window_minutes is None):
            errors["rate_limit_window_minutes"] = "A rate cap needs both a count and a window."
        if self.sla_minutes and not self.expiry_behaviour:
            errors["expiry_behaviour"] = (
                "Say what happens when the SLA passes at the end of the chain."
            )
        if self.expiry_behaviour and not self.sla_minutes:
            errors["sla_minutes"] = "An expiry behaviour needs an SLA to expire."
        if self.expiry_behaviour == ExpiryBehaviour.REROUTE and self.expiry_team_id is None:
            errors["expiry_team"] = "Re-route needs a team to re-route to."
        if self.escalation_chain and not self.sla_minutes:
            errors["escalation_chain"] = "A chain moves on when the SLA passes: set an SLA."
        if self.escalation_chain:
            missing = [s for s in self.chain_slugs if not Team.objects.filter(slug=s).exists()]
            if missing:
                errors["escalation_chain"] = f"No team with slug: {', '.join(missing)}."
        trusted_bar = self.min_confidence_for(TrustLevel.TRUSTED)
        if (
            self.irreversible_trusted_min_confidence is not None
            and self.irreversible_trusted_min_confidence < trusted_bar
        ):
            errors["irreversible_trusted_min_confidence"] = (
                f"Must be stricter than the trusted bar ({trusted_bar:.2f})."
            )
        if self.approvals_required_above is not None and self.approvals_required < 2:
            errors["approvals_required_above"] = "Only meaningful with 2 or more approvals."
        if errors:
            raise ValidationError(errors)

    @property
    def chain_slugs(self) -> list[str]:
        return [s.strip() for s in self.escalation_chain.split(",") if s.strip()]

    def min_confidence_for(self, trust_level: str) -> float:
        if trust_level == TrustLevel.PROBATION and self.min_confidence_probation is not None:
            return self.min_confidence_probation
        if trust_level == TrustLevel.TRUSTED and self.min_confidence_trusted is not None:
            return self.min_confidence_trusted
        return self.min_confidence


class PolicyCacheStamp(models.Model):
    """One row whose `stamp` the database itself rewrites (triggers) whenever a policy or an
    agent profile changes, by any route; every process compares it to its compiled cache."""

    stamp = models.CharField(max_length=64)

    def __str__(self) -> str:
        return self.stamp


class CalibrationTarget(models.Model):
    """The autonomous error an action type may have, as an admin set it; without a row the
    recommender derives one from the type's risk (`recommender.derived_target`)."""

    action_type = models.CharField(max_length=100, unique=True)
    target = models.FloatField(
        validators=[MinValueValidator(0.0001), MaxValueValidator(0.5)],
        help_text="The most that may be wrong among the actions run alone (0.01 = 1%).",
    )
    level = models.FloatField(
        default=0.95,
        validators=[MinValueValidator(0.5), MaxValueValidator(0.999)],
        help_text="How sure the bound must be (one-sided confidence level).",
    )
    note = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["action_type"]

    def __str__(self) -> str:
        return f"{self.action_type}: {self.target:.2%} at {self.level:.0%}"

    def clean(self) -> None:
        # Here: the tool registry fills as apps load, after this module is imported.
        from workflows.tools import ACTION_TYPES

        if self.action_type not in ACTION_TYPES:
            raise ValidationError({"action_type": "Unknown action type."})


class EscalationKind(models.TextChoices):
    REVIEW = "review", "Review before it runs"
    # A random sample of what ran alone (or is about to, when irreversible), judged like an
    # escalation: the evidence that keeps a threshold in force honest.
    AUDIT = "audit", "Audit of an action allowed to run alone"


class EscalationStatus(models.TextChoices):
    OPEN = "open"
    CLAIMED = "claimed"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


UNDECIDED_STATUSES = (EscalationStatus.OPEN, EscalationStatus.CLAIMED)

# The live queue's order: the SLA's due time, else the one its risk implies.
QUEUE_DUE = Coalesce(F("sla_due_at"), F("due_without_sla_at"))


class Escalation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action = models.OneToOneField(
        "workflows.Action", on_delete=models.CASCADE, related_name="escalation"
    )
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="escalations")
    status = models.CharField(
        max_length=16, choices=EscalationStatus.choices, default=EscalationStatus.OPEN
    )
    # db_default: SQLite adds the column in place instead of remaking the table (which
    # would drop the rollup triggers on it).
    kind = models.CharField(
        max_length=8,
        choices=EscalationKind.choices,
        default=EscalationKind.REVIEW,
        db_default=EscalationKind.REVIEW,
    )
    reasons = models.JSONField(default=list)
    summary = models.TextField(blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When a person should have decided by; a database timer scanned by beat, never a countdown.
    sla_due_at = models.DateTimeField(null=True, blank=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # Routing frozen from the policy version that escalated it: editing the policy later
    # changes nothing already open.
    sla_minutes = models.PositiveIntegerField(null=True, blank=True)
    chain = models.JSONField(default=list, blank=True, help_text="Team ids, next first.")
    hops = models.PositiveSmallIntegerField(
        default=0, help_text="How many times the SLA passed and it moved on."
    )
    expiry_behaviour = models.CharField(max_length=8, choices=ExpiryBehaviour.choices, blank=True)
    expiry_team = models.ForeignKey(
        Team, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    approvals_required = models.PositiveSmallIntegerField(default=1)
    # Graded from the policy's inputs when opened (escalations.risk).
    risk = models.CharField(max_length=8, choices=RiskLevel.choices, default=RiskLevel.MEDIUM)
    # When it is due if no SLA says otherwise (raised + escalations.risk.DUE_WITHOUT_SLA):
    # the queue orders by the SLA, else by this. Defaults to "at once": an escalation written
    # without it is never buried.
    due_without_sla_at = models.DateTimeField(default=timezone.now)
    # What a reviewer may search for (ticket, customer, proposal, agent), written when opened.
    search_text = models.TextField(blank=True, default="")
    # What its queue row shows that cannot change while it waits (escalations.rendering.
    # queue_card), written when opened: a page reads it instead of the payload and the run.
    card = models.JSONField(default=dict, blank=True)
    # The row is the durable wake-up of the model's summary (escalations.actions.summaries):
    # when it is wanted (set when opened), pushed ahead while a writer holds it (its lease),
    # null once written. Null on everything not opened by escalate_action.
    summary_wanted_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "status", "-created_at"], name="esc_team_status_created"),
            models.Index(fields=["status", "-created_at"], name="esc_status_created"),
            # The live queue's order (review.queue.ordered) over undecided rows only: a page
            # is an index range read however many are open, and decided history (most rows,
            # in time) is not in these indexes at all. team_id rides along in the first so an
            # admin's or a multi-team reviewer's page filters on the index, not the heap.
            models.Index(
                QUEUE_DUE,
                F("created_at"),
                F("id"),
                F("team"),
                name="esc_undecided_due_queue",
                condition=models.Q(status__in=UNDECIDED_STATUSES),
            ),
            models.Index(
                F("team"),
                QUEUE_DUE,
                F("created_at"),
                F("id"),
                name="esc_undecided_team_due_queue",
                condition=models.Q(status__in=UNDECIDED_STATUSES),
            ),
            # Only the few rows still waiting for the model's summary: the writer's claim
            # reads this, never the table.
            models.Index(
                F("summary_wanted_at"),
                name="esc_summary_wanted",
                condition=models.Q(summary_wanted_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action.action_type} for review ({self.status})"

    @property
    def is_undecided(self) -> bool:
        return self.status in UNDECIDED_STATUSES

    @property
    def reported_status(self) -> str:
        """Its status as shown and reported: `answered` for a Respond (reads the decision)."""
        if self.status != EscalationStatus.REJECTED:
            return self.status
        decision = Decision.objects.filter(escalation=self).only("verdict").first()
        return reported_status(self.status, decision.verdict if decision else None)

    @property
    def next_team_id(self) -> int | None:
        """Who gets it when the SLA passes, or None at the end of the chain."""
        return int(self.chain[self.hops]) if self.hops < len(self.chain) else None

    @property
    def needs_quorum(self) -> bool:
        return self.approvals_required > 1

    @property
    def is_audit(self) -> bool:
        return self.kind == EscalationKind.AUDIT

    @property
    def audits_what_ran(self) -> bool:
        """An audit of an action that already ran alone (not one holding it before it runs):
        its verdict is evidence, it decides nothing."""
        return self.is_audit and self.action.status != ActionStatus.ESCALATED

    def approval_progress(self) -> dict[str, Any]:
        """For reviewers: who approved so far and how many more are needed."""
        names = list(
            self.approvals.order_by("created_at").values_list("decided_by__username", flat=True)
        )
        return {
            "required": self.approvals_required,
            "approved_by": names,
            "missing": max(self.approvals_required - len(names), 0),
        }


class Verdict(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    # Answer the agent in free text instead of running its action (LangGraph's "respond"):
    # the action does not run, the text reaches the agent, which revises it. Reported as
    # `answered` (reported_status below), stored as rejected.
    RESPOND = "respond"


# What a Respond is called wherever a decided escalation or its action is shown or reported
# (the API and its webhooks, the client, Slack, badges): its own verdict, never "rejected".
# Stored, both are `rejected` (the contract's statuses: nothing ran), told apart by the
# decision's verdict (the action's `feedback` carries it too).
ANSWERED = "answered"


def reported_status(status: str, verdict: str | None) -> str:
    """An escalation's or an action's status as reported: `answered` for a Respond."""
    return ANSWERED if verdict == Verdict.RESPOND and status == "rejected" else status


class Via(models.TextChoices):
    WEB = "web"
    SLACK = "slack"
    API = "api"
    # Caliber itself, applying a policy's declared expiry behaviour when the SLA ran out.
    SYSTEM = "system"


class ServiceAccountKind(models.TextChoices):
    # The SLA's system user (escalations.actions.sla): decides only via "system", as a
    # policy's declared expiry behaviour.
    SYSTEM = "system"
    # An agent's API account (`api-<agent>`, made by earlier versions for reviewer tokens):
    # never decides anything.
    AGENT = "agent"


class ServiceAccount(models.Model):
    """Marks a user as a machine, not a person. The database (triggers on decisions and
    approvals, migration 0009) refuses a verdict by any service account except the system
    user deciding via "system": decisions are made by people."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="service_account",
    )
    kind = models.CharField(max_length=8, choices=ServiceAccountKind.choices)

    def __str__(self) -> str:
        return f"{self.user} ({self.kind} service account)"


class Decision(models.Model):
    """A person's verdict. One per escalation, enforced by the database."""

    escalation = models.OneToOneField(Escalation, on_delete=models.CASCADE, related_name="decision")
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    via = models.CharField(max_length=8, choices=Via.choices)
    reason = models.TextField(blank=True)
    edited_payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.verdict} by {self.decided_by} via {self.via}"

    @property
    def is_final(self) -> bool:
        return True


class Approval(models.Model):
    """One reviewer's approval of a quorum escalation. Distinct reviewers by construction;
    the Decision is written when the last approval needed arrives."""

    escalation = models.ForeignKey(Escalation, on_delete=models.CASCADE, related_name="approvals")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals"
    )
    via = models.CharField(max_length=8, choices=Via.choices)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["escalation", "decided_by"], name="one_approval_per_reviewer"
            ),
        ]

    def __str__(self) -> str:
        return f"approval by {self.decided_by} via {self.via}"

    @property
    def verdict(self) -> Verdict:
        return Verdict.APPROVE

    @property
    def is_final(self) -> bool:
        return False
