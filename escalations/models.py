"""Teams, agent profiles, autonomy policies, escalations and the one decision each may get."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from workflows.models import PolicyOutcome


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
    description = models.TextField(blank=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    trust_level = models.CharField(
        max_length=16, choices=TrustLevel.choices, default=TrustLevel.STANDARD
    )
    customer_facing = models.BooleanField(default=False)
    autonomy_paused = models.BooleanField(
        default=False, help_text="Kill switch: every action of this agent goes to review."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AutonomyPolicy(models.Model):
    """When an agent may act alone.

    Precedence: every enabled policy whose scope matches the action is evaluated; the most
    restrictive outcome wins (BLOCK over REVIEW over AUTO). Among policies giving the winning
    outcome, the highest priority one is recorded and routes the escalation. An action that
    no policy covers goes to review.
    """

    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="Higher wins ties between policies.")
    workflow = models.CharField(max_length=100, blank=True, help_text="Blank: any workflow.")
    agent = models.ForeignKey(
        AgentProfile, on_delete=models.CASCADE, null=True, blank=True, help_text="Blank: any."
    )
    action_type = models.CharField(max_length=100, blank=True, help_text="Blank: any type.")
    outcome = models.CharField(max_length=8, choices=PolicyOutcome.choices)
    min_confidence = models.FloatField(
        default=0.8,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="With outcome 'act alone': below this confidence the action goes to review.",
    )
    irreversible_requires_review = models.BooleanField(
        default=True, help_text="With outcome 'act alone': irreversible actions go to review."
    )
    team = models.ForeignKey(
        Team,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        help_text="Who reviews what this policy escalates. Blank: the agent's team.",
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-priority", "name"]
        verbose_name_plural = "autonomy policies"

    def __str__(self) -> str:
        return f"{self.name} (v{self.version})"

    def covers(self, *, workflow: str, agent_id: int, action_type: str) -> bool:
        return (
            self.enabled
            and (not self.workflow or self.workflow == workflow)
            and (self.agent_id is None or self.agent_id == agent_id)
            and (not self.action_type or self.action_type == action_type)
        )


class EscalationStatus(models.TextChoices):
    OPEN = "open"
    CLAIMED = "claimed"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


UNDECIDED_STATUSES = (EscalationStatus.OPEN, EscalationStatus.CLAIMED)


class Escalation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action = models.OneToOneField(
        "workflows.Action", on_delete=models.CASCADE, related_name="escalation"
    )
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="escalations")
    status = models.CharField(
        max_length=16, choices=EscalationStatus.choices, default=EscalationStatus.OPEN
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "status", "-created_at"], name="esc_team_status_created"),
            models.Index(fields=["status", "-created_at"], name="esc_status_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action.action_type} for review ({self.status})"

    @property
    def is_undecided(self) -> bool:
        return self.status in UNDECIDED_STATUSES


class Verdict(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    # Answer the agent in free text instead of running its action (LangGraph's "respond"):
    # the action does not run, the escalation ends rejected, the text reaches the agent.
    RESPOND = "respond"


class Via(models.TextChoices):
    WEB = "web"
    SLACK = "slack"
    API = "api"


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
