"""What Caliber knows about Slack: who is who, which message shows which escalation, and every
attempt to put one there (healthchecks' Notification: one row per attempt, with its error)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from escalations.models import Escalation, Team


class IdentitySource(models.TextChoices):
    ADMIN = "admin", "Linked by an admin"
    EMAIL = "email", "Matched by email"


class SlackIdentity(models.Model):
    """A Slack user and the Caliber reviewer they are.

    Admin links win and are never overwritten. Email matches are looked up once and cached;
    a miss is cached too (user empty) and looked up again only after a while, so someone who
    gets a Caliber account later is not locked out for good.
    """

    slack_user_id = models.CharField("Slack user ID", max_length=32, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="slack_identities",
    )
    source = models.CharField(
        max_length=8, choices=IdentitySource.choices, default=IdentitySource.ADMIN
    )
    email = models.CharField(max_length=254, blank=True, help_text="As Slack reported it.")
    looked_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "Slack identity"
        verbose_name_plural = "Slack identities"

    def __str__(self) -> str:
        return f"{self.slack_user_id} → {self.user or 'nobody'}"

    def clean(self) -> None:
        if self.source == IdentitySource.ADMIN and self.user_id is None:
            raise ValidationError({"user": "Choose the reviewer this Slack user is."})


class MessageStatus(models.TextChoices):
    PENDING = "pending", "Not posted yet"
    POSTED = "posted", "Posted"
    FAILED = "failed", "Failed permanently"
    SKIPPED = "skipped", "Skipped (decided or moved first)"


class SlackMessage(models.Model):
    """One escalation's message in one channel: the outbox row and the delivery state.

    Written in the transaction that opened or changed the escalation, so a lost Celery send
    loses nothing (the sweeper finds rows with `synced < sync_requested`). Delivery claims a
    short lease with a conditional UPDATE instead of holding a row lock across an HTTP call,
    so a slow Slack never blocks a decision.
    """

    escalation = models.ForeignKey(
        Escalation, on_delete=models.CASCADE, related_name="slack_messages"
    )
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="+")
    channel = models.CharField(max_length=100, help_text="As configured on the team.")
    channel_id = models.CharField(max_length=32, blank=True, help_text="As Slack resolved it.")
    ts = models.CharField("message ts", max_length=32, blank=True)
    status = models.CharField(
        max_length=8, choices=MessageStatus.choices, default=MessageStatus.PENDING
    )
    # Outbox counters: each change of the escalation bumps sync_requested; delivery records
    # the value it rendered from in synced.
    sync_requested = models.PositiveIntegerField(default=1)
    synced = models.PositiveIntegerField(default=0)
    requested_at = models.DateTimeField(default=timezone.now)
    rendered_hash = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since the last success (rate limits excluded)."
    )
    error = models.CharField(max_length=300, blank=True, help_text="The last error, if any.")
    failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["escalation", "channel"], name="slack_one_message_per_channel"
            )
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="slack_msg_due")]

    def __str__(self) -> str:
        return f"{self.channel} · {self.get_status_display()}"

    @property
    def needs_sync(self) -> bool:
        return self.synced < self.sync_requested


class Notification(models.Model):
    """One attempt to call Slack for an escalation, with what came back."""

    escalation = models.ForeignKey(
        Escalation, on_delete=models.CASCADE, related_name="slack_attempts"
    )
    message = models.ForeignKey(
        SlackMessage, on_delete=models.CASCADE, null=True, blank=True, related_name="attempts"
    )
    method = models.CharField(max_length=40)
    ok = models.BooleanField()
    error = models.CharField(max_length=300, blank=True)
    permanent = models.BooleanField(default=False)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    retry_after = models.FloatField(
        null=True, blank=True, help_text="Seconds until the next attempt, when one is planned."
    )
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.method}: {'ok' if self.ok else self.error}"


class SeenRequest(models.Model):
    """Signatures of interaction requests already handled: a replay inside Slack's 5-minute
    window is refused instead of acted on twice. Pruned by the sweeper."""

    signature = models.CharField(max_length=80, primary_key=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.signature[:16]
