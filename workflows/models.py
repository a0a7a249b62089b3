"""Runs, steps, proposed actions, the effect ledger and the trace."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.utils import timezone


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ActionStatus(models.TextChoices):
    PROPOSED = "proposed"
    AUTO_APPROVED = "auto_approved"
    ESCALATED = "escalated"
    APPROVED = "approved"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    EXECUTED = "executed"
    FAILED = "failed"


class PolicyOutcome(models.TextChoices):
    AUTO = "auto", "Act alone"
    REVIEW = "review", "Needs review"
    BLOCK = "block", "Blocked"


class WorkflowRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.CharField(max_length=100)
    workflow_version = models.PositiveIntegerField()
    agent = models.ForeignKey("escalations.AgentProfile", on_delete=models.PROTECT)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    input = models.JSONField(default=dict)
    # Step outputs keyed by step name; every write bumps state_version.
    state = models.JSONField(default=dict)
    state_version = models.PositiveIntegerField(default=0)
    model_label = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"], name="run_status_updated")]

    def __str__(self) -> str:
        return f"{self.workflow} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def title(self) -> str:
        subject = self.input.get("subject") if isinstance(self.input, dict) else None
        return str(subject) if subject else self.workflow


class StepRun(models.Model):
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="one_step_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class Action(models.Model):
    """Something an agent proposes to do; policy decides whether it may run alone."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="actions", null=True, blank=True
    )
    step_name = models.CharField(max_length=100, blank=True)
    agent = models.ForeignKey("escalations.AgentProfile", on_delete=models.PROTECT)
    action_type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    confidence = models.FloatField()
    rationale = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=ActionStatus.choices, default=ActionStatus.PROPOSED
    )
    # The policy evaluation, frozen at the time it was made.
    outcome = models.CharField(max_length=8, choices=PolicyOutcome.choices, blank=True)
    reasons = models.JSONField(default=list)
    policy = models.ForeignKey(
        "escalations.AutonomyPolicy", on_delete=models.SET_NULL, null=True, blank=True
    )
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    # What actually executes: the payload, or the reviewer's edited version of it.
    approved_payload = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    executed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.action_type} ({self.status})"

    @property
    def payload_to_execute(self) -> dict[str, Any]:
        return self.approved_payload if self.approved_payload is not None else self.payload


class Effect(models.Model):
    """The effect ledger: one row per external effect, keyed so a retry can never repeat it."""

    key = models.CharField(max_length=200, unique=True)
    action = models.OneToOneField(Action, on_delete=models.CASCADE, related_name="effect")
    result = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.key


class TraceKind(models.TextChoices):
    OBSERVED = "observed"
    DECIDED = "decided"
    POLICY = "policy"
    ESCALATED = "escalated"
    HUMAN = "human"
    EXECUTED = "executed"
    SKIPPED = "skipped"
    STATE = "state"
    ERROR = "error"
    SYSTEM = "system"


class TraceEvent(models.Model):
    """What the agent observed, what it decided and why; what policy and people did."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="trace")
    step_name = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=16, choices=TraceKind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"


class OutcomeQuality(models.TextChoices):
    GOOD = "good"
    BAD = "bad"
    NEUTRAL = "neutral"


class OutcomeSource(models.TextChoices):
    API = "api"
    FOLLOW_UP = "follow_up", "Follow-up step"
    REVIEWER = "reviewer"


class Outcome(models.Model):
    """What happened later, attached to an action or a run: the longitudinal quality signal."""

    action = models.ForeignKey(
        Action, on_delete=models.CASCADE, related_name="outcomes", null=True, blank=True
    )
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="outcomes", null=True, blank=True
    )
    metric = models.CharField(max_length=100, help_text="e.g. customer_replied, judged_correct")
    quality = models.CharField(max_length=8, choices=OutcomeQuality.choices)
    value = models.FloatField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=OutcomeSource.choices)
    note = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    recorded_by = models.CharField(max_length=150, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-recorded_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(action__isnull=False) | models.Q(run__isnull=False),
                name="outcome_has_a_subject",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.metric}: {self.quality}"
