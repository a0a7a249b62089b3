"""Prompt versions move draft -> tested -> active -> retired; only tested versions go live."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class PromptStatus(models.TextChoices):
    DRAFT = "draft"
    TESTED = "tested"
    ACTIVE = "active"
    RETIRED = "retired"


class PromptVersion(models.Model):
    name = models.CharField(max_length=100, help_text="e.g. triage.classify")
    version = models.PositiveIntegerField()
    system = models.TextField(help_text="System message.")
    template = models.TextField(help_text="User message; $variables are filled in per call.")
    model = models.CharField(max_length=100, blank=True, help_text="Blank: OPENAI_MODEL.")
    parameters = models.JSONField(
        default=dict, blank=True, help_text='e.g. {"temperature": 0, "max_tokens": 400}'
    )
    status = models.CharField(
        max_length=8, choices=PromptStatus.choices, default=PromptStatus.DRAFT
    )
    notes = models.TextField(blank=True)
    last_eval = models.JSONField(default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="one_prompt_version"),
            # The database, not the admin, guarantees a single live version per prompt.
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(status="active"),
                name="one_active_prompt_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.status})"


class PromptEvalCase(models.Model):
    """A stored fixture: input variables and the properties the output must have."""

    prompt_name = models.CharField(max_length=100, db_index=True)
    name = models.CharField(max_length=200)
    variables = models.JSONField(default=dict)
    expected = models.JSONField(
        default=dict,
        help_text='Per output field: {"equals": v} | {"in": [..]} | {"min": a, "max": b} | '
        '{"contains": "text"} | {"not_contains": "text"}',
    )

    class Meta:
        ordering = ["prompt_name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["prompt_name", "name"], name="one_eval_case_name")
        ]

    def __str__(self) -> str:
        return f"{self.prompt_name}: {self.name}"


class PromptAudit(models.Model):
    prompt_name = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    event = models.CharField(max_length=32)
    detail = models.TextField(blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.prompt_name} v{self.version}: {self.event}"


class RunPromptPins(models.Model):
    """The prompt versions a run started with: {name: version}. One row per run."""

    run = models.OneToOneField(
        "workflows.WorkflowRun", on_delete=models.CASCADE, related_name="prompt_pins"
    )
    versions = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"pins for {self.run_id}"


class ModelCall(models.Model):
    """One call to the model: what was asked (prompt version), of whom, at what cost."""

    run = models.ForeignKey(
        "workflows.WorkflowRun",
        on_delete=models.CASCADE,
        related_name="model_calls",
        null=True,
        blank=True,
    )
    step_name = models.CharField(max_length=100, blank=True)
    prompt_name = models.CharField(max_length=100)
    prompt_version = models.PositiveIntegerField()
    model = models.CharField(max_length=100)
    ok = models.BooleanField()
    error = models.TextField(blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    attempts = models.PositiveIntegerField(default=1)
    mean_logprob = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prompt_name} v{self.prompt_version} on {self.model}"
