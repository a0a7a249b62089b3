"""Runs, steps, proposed actions, the effect ledger and the trace."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    # Only when the run's objective was met (the workflow's declared outcome says so).
    SUCCEEDED = "succeeded"
    # A person took the work over (a rejected reply's fallback owner, rounds of answers
    # exhausted): not a success, not a crash.
    HANDED_OFF = "handed_off", "Handed off"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.HANDED_OFF, RunStatus.FAILED, RunStatus.CANCELLED}
)


class StepStatus(models.TextChoices):
    PENDING = "pending"
    # An async step handed to the broker, not yet claimed by a worker.
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Steps whose dependents may go ahead: a cancelled async step is skipped, not awaited.
DONE_STEP_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.CANCELLED})


class StepMode(models.TextChoices):
    SYNC = "sync", "Sync (critical path, inline)"
    ASYNC = "async", "Async (parallel task)"


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
    # The DAG chosen for this run (workflows.specs.PlannedStep.to_json each), stored before
    # any step executes; with the input's digest, what recovery checks is unchanged.
    plan = models.JSONField(default=list)
    plan_digest = models.CharField(max_length=64, blank=True)
    objective_digest = models.CharField(max_length=64, blank=True)
    # The current state, three dimensions kept apart ({"conversation", "workspace",
    # "systemic"}); every write is a new RunSnapshot and bumps state_version (the referee of
    # optimistic concurrency: a write names the version it read).
    state = models.JSONField(default=dict)
    state_version = models.PositiveIntegerField(default=0)
    model_label = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    # Set when recovery refused to resume; a person decides (a resume_run escalation).
    attention = models.TextField(blank=True)
    # Who is advancing the run, until when. A lease, not a row lock: steps call models for
    # seconds, and a crashed holder's lease simply expires (the reconciler takes over).
    lease_owner = models.CharField(max_length=120, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped by whoever wants the run advanced while someone else holds the lease; the holder
    # re-checks before letting go, so no nudge is lost.
    pokes = models.PositiveIntegerField(default=0)
    wake_at = models.DateTimeField(null=True, blank=True)
    # A person's decision made this waiting run ready to go on: the drain claims it (before
    # any start) and clears it (engine.drain_runs). Set in the deciding transaction.
    ready_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    idempotency_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    durable = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Not updated_at: each write of the engine moves it, and no update would be HOT
            # (migration 0010).
            models.Index(fields=["status", "created_at"], name="run_status_created"),
            models.Index(
                fields=["wake_at"], name="run_wake_at", condition=models.Q(wake_at__isnull=False)
            ),
            models.Index(
                fields=["ready_at"],
                name="run_ready_at",
                condition=models.Q(ready_at__isnull=False),
            ),
            models.Index(
                fields=["deadline_at"],
                name="run_deadline_open",
                condition=models.Q(status__in=["pending", "running", "waiting"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def title(self) -> str:
        if isinstance(self.input, dict):
            for field in ("subject", "company", "title"):
                if self.input.get(field):
                    return str(self.input[field])
        return self.workflow

    @property
    def has_live_lease(self) -> bool:
        return bool(
            self.lease_owner
            and self.lease_expires_at is not None
            and self.lease_expires_at > timezone.now()
        )

    def plan_levels(self) -> list[list[dict[str, Any]]]:
        """The plan as layers: each step one layer below the deepest step it depends on."""
        depth: dict[str, int] = {}
        for entry in self.plan:
            deps = entry.get("depends_on", [])
            depth[entry["name"]] = 1 + max((depth.get(d, 0) for d in deps), default=-1)
        levels: list[list[dict[str, Any]]] = []
        for entry in self.plan:
            d = depth[entry["name"]]
            while len(levels) <= d:
                levels.append([])
            levels[d].append(entry)
        return levels


class StepRun(models.Model):
    # Looked up by run through one_step_per_name (run, name): an index of the run alone would
    # be one more entry to write with every row (migration 0009).
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    name = models.CharField(max_length=100)
    template = models.CharField(max_length=100, blank=True)
    position = models.PositiveIntegerField()
    mode = models.CharField(max_length=8, choices=StepMode.choices, default=StepMode.SYNC)
    depends_on = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    # Counted when an attempt is claimed, before it runs: a worker killed mid-step still used
    # its attempt, so a step that kills its worker every time dead-letters too.
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    timeout_seconds = models.FloatField(default=120.0)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    lease_owner = models.CharField(max_length=120, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # A retry's backoff: not claimed before this.
    not_before = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # What a waiting step waits for: {"actions": [ids]} or {"until": iso}.
    waiting_for = models.JSONField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="one_step_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def is_done(self) -> bool:
        return self.status in DONE_STEP_STATUSES

    @property
    def has_live_lease(self) -> bool:
        return bool(
            self.lease_owner
            and self.lease_expires_at is not None
            and self.lease_expires_at > timezone.now()
        )


class RunSnapshot(models.Model):
    """One version of a run's state, all three dimensions, chained by digest.

    Rows are only ever added: a rollback writes a new version equal to an old one. `digest`
    covers the parent's digest and this version's data, so an edited or missing version breaks
    the chain, which recovery checks before a run resumes.
    """

    # Looked up by run through one_snapshot_per_version (run, version), as the steps are.
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="snapshots", db_index=False
    )
    version = models.PositiveIntegerField()
    conversation = models.JSONField(default=dict)
    workspace = models.JSONField(default=dict)
    systemic = models.JSONField(default=dict)
    changed = models.JSONField(default=list)  # which dimensions this write changed
    step_name = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    parent_digest = models.CharField(max_length=64, blank=True)
    digest = models.CharField(max_length=64)
    # A person accepted this state after a recovery mismatch: the chain is checked from here.
    anchor = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "version"]
        constraints = [
            # The optimistic-concurrency referee: two writers of version N+1, one wins.
            models.UniqueConstraint(fields=["run", "version"], name="one_snapshot_per_version"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} v{self.version}"

    def data(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "workspace": self.workspace,
            "systemic": self.systemic,
        }


class DeadLetter(models.Model):
    """A step that used all its attempts. The run failed; an admin may retry it."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="dead_letters")
    step_name = models.CharField(max_length=100)
    attempts = models.PositiveIntegerField()
    error = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    retried_at = models.DateTimeField(null=True, blank=True)
    retried_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.step_name} of {self.run_id}"


class Outbox(models.Model):
    """A task send that must not be lost, written in the transaction that needs it.

    Relayed right after commit; a row still here later (the process died between commit and
    send, or the broker was down) is sent by the beat-driven relay. Tasks are idempotent, so
    a row sent twice is harmless.
    """

    task = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    available_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.task}{self.args}"


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
    # Audit sampling of what runs alone: the probability it had of being sampled (the
    # recommender weights an audited action by its inverse) and whether it was.
    audit_probability = models.FloatField(null=True, blank=True)
    audit_sampled = models.BooleanField(default=False, db_default=False)
    # What actually executes: the payload, or the reviewer's edited version of it.
    approved_payload = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    # The proposed payload's digest: recovery refuses to resume if the payload changed since.
    payload_digest = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    executed_at = models.DateTimeField(null=True, blank=True)
    # The undo window of an approved irreversible action: it runs no earlier than this (a
    # database timer the engine's wake-up reads, never a broker countdown alone).
    execute_after = models.DateTimeField(null=True, blank=True)
    # What the person who decided told the agent, for the engine to act on without knowing
    # escalations: {"verdict", "text", "by", "owner"} (owner: who takes the work over if the
    # action type's fallback runs).
    feedback = models.JSONField(default=dict, blank=True)
    # A revision the agent proposed after a person answered (Respond) this one.
    revision_of = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="revisions"
    )
    revision_round = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # Rate caps: how many actions an agent ran alone since a moment, per evaluation.
            models.Index(fields=["agent", "outcome", "created_at"], name="action_agent_rate"),
            # The recommender's population: the latest actions of one type.
            models.Index(fields=["action_type", "-created_at"], name="action_type_recent"),
            # The dashboard's "executed alone, judge them": newest first, never a full scan.
            models.Index(
                fields=["-created_at"],
                name="action_auto_executed",
                condition=models.Q(outcome="auto", executed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action_type} ({self.status})"

    @property
    def payload_to_execute(self) -> dict[str, Any]:
        return self.approved_payload if self.approved_payload is not None else self.payload

    @property
    def answered(self) -> bool:
        """A person answered it in words (Respond) instead of approving or rejecting it."""
        return self.feedback.get("verdict") == "respond"

    @property
    def verdict_label(self) -> str:
        """The status a person reads: an answered action is not "rejected"."""
        return "answered" if self.answered else self.status

    def in_undo_window(self, now: datetime) -> bool:
        return (
            self.status == ActionStatus.APPROVED
            and self.execute_after is not None
            and self.execute_after > now
        )


class Effect(models.Model):
    """The effect ledger: one row per external effect, keyed so a retry can never repeat it.

    The key is `run:step:name` — attempt-independent, so every attempt and every redelivery
    of a step computes the same key; it is also what the external system is given as its
    idempotency key.
    """

    key = models.CharField(max_length=200, unique=True)
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="effects", null=True, blank=True
    )
    step_name = models.CharField(max_length=100, blank=True)
    action = models.OneToOneField(
        Action, on_delete=models.CASCADE, related_name="effect", null=True, blank=True
    )
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
    RECOVERY = "recovery"
    AUDIT = "audit"


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
