"""API tokens, what an agent told us about the actions it submitted, and agent webhooks with a
row per delivery and per attempt."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "cal_"  # noqa: S105 (a marker that makes leaked tokens greppable)


def hash_token(raw: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: there is nothing to brute-force,
    # and the lookup stays one indexed query per request.
    return hashlib.sha256(raw.encode()).hexdigest()


def new_raw_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    """A bearer token that acts for one agent. Only its hash is stored; it is shown once.

    A reviewer token also decides escalations, as `user` (a person, never a service
    account, whose team memberships say which escalations it sees), so every decision names
    a person, never "the API" — and never escalations of its own agent's actions.
    """

    name = models.CharField(max_length=100, blank=True, help_text="What uses it, e.g. 'prod'.")
    agent = models.ForeignKey(
        "escalations.AgentProfile", on_delete=models.CASCADE, related_name="api_tokens"
    )
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    reviewer = models.BooleanField(
        default=False,
        help_text="May list and decide escalations, as the user below, in that user's teams.",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="api_tokens",
        help_text="The person a reviewer token decides as (required for a reviewer token).",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(reviewer=False) | models.Q(user__isnull=False),
                name="reviewer_token_names_a_person",
            ),
        ]

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        return f"{self.prefix}… for {self.agent}{label}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def actor(self) -> str:
        """How this token is named in traces and outcomes."""
        return f"api:{self.prefix}"


class SubmittedAction(models.Model):
    """What an agent outside Caliber said about an action it submitted through the API."""

    action = models.OneToOneField(
        "workflows.Action",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="api_submission",
    )
    token = models.ForeignKey(
        ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    client_key = models.CharField(max_length=150, help_text="The agent's own idempotency key.")
    workflow = models.CharField(max_length=100, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    reversible = models.BooleanField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    result_reported_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.action_id} ({self.client_key})"


class AgentWebhook(models.Model):
    """Where Caliber POSTs an agent's decided escalations, signed with `secret`."""

    agent = models.OneToOneField(
        "escalations.AgentProfile", on_delete=models.CASCADE, related_name="webhook"
    )
    url = models.URLField(max_length=500)
    # Stored in clear: Caliber must sign with it. Rotating it is editing it.
    secret = models.CharField(max_length=100, default=new_webhook_secret)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["agent__name"]

    def __str__(self) -> str:
        return f"{self.agent} -> {self.url}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(models.TextChoices):
    ACTION_DECIDED = "action.decided"


class WebhookDelivery(models.Model):
    """One event to one webhook: the outbox row, written in the deciding transaction.

    The body is frozen when the event happens, so retries and re-sends carry the same bytes
    and the same `event_id` (receivers deduplicate on it); each try is a WebhookAttempt.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(AgentWebhook, on_delete=models.CASCADE, related_name="deliveries")
    escalation = models.ForeignKey(
        "escalations.Escalation", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    url = models.URLField(max_length=500, help_text="The webhook's URL when this was sent.")
    body = models.TextField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A worker's claim on the delivery while it sends; expires if the worker dies.
    leased_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    resend_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="resends"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # One automatic delivery per event; re-sends from the admin are extra rows.
            models.UniqueConstraint(
                fields=["webhook", "escalation", "event"],
                condition=models.Q(resend_of__isnull=True),
                name="one_delivery_per_event",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due")]

    def __str__(self) -> str:
        return f"{self.event} to {self.url} ({self.status})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error[:40]}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
