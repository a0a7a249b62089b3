"""Degradation alerts: a rate leaving its band opens one incident, not one alert per event."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class AlertMetric(models.TextChoices):
    APPROVAL_RATE = "approval_rate", "Human approval rate"
    OVERRIDE_RATE = "override_rate", "Override rate (rejected or edited)"
    FAILURE_RATE = "failure_rate", "Run failure rate"
    ESCALATION_RATE = "escalation_rate", "Escalation rate"
    # Not a rate in a band: a sequential test per (agent, action type) on people's judgements
    # (review/metrics/drift.py); one incident per drifting (agent, action type).
    CALIBRATION_DRIFT = "calibration_drift", "Calibration drift of an agent acting alone"


class AlertRule(models.Model):
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    metric = models.CharField(max_length=32, choices=AlertMetric.choices)
    agent = models.ForeignKey(
        "escalations.AgentProfile",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        help_text="Blank: every agent.",
    )
    workflow = models.CharField(max_length=100, blank=True, help_text="Blank: any workflow.")
    window_minutes = models.PositiveIntegerField(default=60)
    min_samples = models.PositiveIntegerField(
        default=20, help_text="Below this many events in the window the rate is not judged."
    )
    lower_bound = models.FloatField(null=True, blank=True, help_text="Alert below this (0-1).")
    upper_bound = models.FloatField(null=True, blank=True, help_text="Alert above this (0-1).")
    team = models.ForeignKey(
        "escalations.Team",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        help_text="Who is alerted (their Slack channel). Blank: the agent's team.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.metric == AlertMetric.CALIBRATION_DRIFT:
            return
        if self.lower_bound is None and self.upper_bound is None:
            raise ValidationError("Set a lower bound, an upper bound, or both.")
        for bound in (self.lower_bound, self.upper_bound):
            if bound is not None and not 0 <= bound <= 1:
                raise ValidationError("Bounds are rates between 0 and 1.")
        if (
            self.lower_bound is not None
            and self.upper_bound is not None
            and self.lower_bound >= self.upper_bound
        ):
            raise ValidationError("The lower bound must be below the upper bound.")

    def breached_by(self, value: float) -> bool:
        return (self.lower_bound is not None and value < self.lower_bound) or (
            self.upper_bound is not None and value > self.upper_bound
        )


class AlertIncident(models.Model):
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="incidents")
    # What the incident is about when one rule watches many things (drift: "agent/type").
    subject = models.CharField(max_length=200, blank=True, default="", db_default="")
    detail = models.TextField(blank=True, default="", db_default="")
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    value_at_open = models.FloatField()
    last_value = models.FloatField()
    samples = models.PositiveIntegerField()
    notified_at = models.DateTimeField(null=True, blank=True)
    # Failed posts so far; workflows.retry.DELIVERY says when to try again and when to stop.
    notify_attempts = models.PositiveIntegerField(default=0)
    notify_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            # Once per incident, by construction: a rule has at most one open incident.
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=models.Q(closed_at__isnull=True),
                name="one_open_incident_per_rule_subject",
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule} since {self.opened_at:%Y-%m-%d %H:%M}"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


class DriftMonitor(models.Model):
    """The sequential drift test of one agent's one action type (review/metrics/drift.py).

    `reference` is the error-vs-confidence curve the agent was judged to have when the
    monitor was armed; `cusum` the running statistic over every judgement since; `cursor`
    the last judgement read. Alerted, it stays so (and any hold stays in force) until a
    person acknowledges it, which re-arms it on the evidence as it is then.
    """

    agent = models.ForeignKey("escalations.AgentProfile", on_delete=models.CASCADE)
    action_type = models.CharField(max_length=100)
    reference = models.JSONField(default=list)
    reference_size = models.PositiveIntegerField(default=0)
    armed_at = models.DateTimeField(default=timezone.now)
    cusum = models.FloatField(default=0.0)
    observed = models.PositiveIntegerField(default=0, help_text="Judgements read since armed.")
    cursor = models.BigIntegerField(default=0, help_text="The last decision id read.")
    alerted_at = models.DateTimeField(null=True, blank=True)
    incident = models.ForeignKey(
        AlertIncident, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    hold_policy = models.ForeignKey(
        "escalations.AutonomyPolicy",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The review-everything policy put in place when it alerted, if any.",
    )

    class Meta:
        ordering = ["agent", "action_type"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "action_type"], name="one_drift_monitor")
        ]

    def __str__(self) -> str:
        return f"{self.agent} / {self.action_type}"


# --- daily rollups (review/metrics/rollups.py keeps them; nothing else writes them) ---------


class _DayRow(models.Model):
    """One UTC day of one agent's work in one workflow ("" for API actions, no run).

    Triggers on the source table append signed deltas to the *Delta table inside the
    writing transaction; `rollups.compact()` folds them into the *Day table; a reading sums
    both, so it is exact whether or not compaction has run."""

    day = models.DateField()
    agent_id = models.BigIntegerField()
    workflow = models.CharField(max_length=100, blank=True)

    class Meta:
        abstract = True


class _ActionKey(_DayRow):
    action_type = models.CharField(max_length=100)
    outcome = models.CharField(max_length=8)
    n = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.action_type} {self.outcome}: {self.n}"


class ActionDay(_ActionKey):
    """Actions per day, agent, workflow, action type and policy outcome."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "agent_id", "workflow", "action_type", "outcome"],
                name="action_day_key",
            )
        ]
        indexes = [models.Index(fields=["day"], name="action_day_day")]


class ActionDelta(_ActionKey):
    pass


class _RunKey(_DayRow):
    status = models.CharField(max_length=16)
    n = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.workflow} {self.status}: {self.n}"


class RunDay(_RunKey):
    """Runs per day (of their creation), agent, workflow and current status."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "agent_id", "workflow", "status"], name="run_day_key"
            )
        ]
        indexes = [models.Index(fields=["day"], name="run_day_day")]


class RunDelta(_RunKey):
    pass


class _ModelCallKey(_DayRow):
    n = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.workflow}: {self.n} calls"


class ModelCallDay(_ModelCallKey):
    """Model calls, tokens and cost per day of their run's creation, agent and workflow."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "agent_id", "workflow"], name="model_call_day_key"
            )
        ]
        indexes = [models.Index(fields=["day"], name="model_call_day_day")]


class ModelCallDelta(_ModelCallKey):
    pass


class _DecisionKey(_DayRow):
    action_type = models.CharField(max_length=100)
    team_id = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    bin = models.SmallIntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.action_type} {self.kind}: {self.n}"


class DecisionDay(_DecisionKey):
    """People's decisions per day, agent, workflow, action type, the escalation's team, what
    they decided (approved unchanged, edited, rejected, responded) and the action's
    confidence decile: the rates, breakdowns and calibration bins in one table."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "agent_id", "workflow", "action_type", "team_id", "kind", "bin"],
                name="decision_day_key",
            )
        ]
        indexes = [models.Index(fields=["day"], name="decision_day_day")]


class DecisionDelta(_DecisionKey):
    pass
