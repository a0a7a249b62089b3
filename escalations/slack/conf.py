"""Slack configuration read at call time (tests and the admin can change settings live)."""

from __future__ import annotations

from django.conf import settings
from slack_sdk import WebClient
from slack_sdk.signature import Clock, SignatureVerifier

# The verifier's notion of "now". Tests replace it to check the 5-minute window.
CLOCK: Clock = Clock()


def enabled() -> bool:
    return bool(settings.SLACK_BOT_TOKEN and settings.SLACK_SIGNING_SECRET)


def client(*, timeout: int = 10) -> WebClient:
    return WebClient(
        token=settings.SLACK_BOT_TOKEN,
        base_url=(settings.SLACK_API_URL or WebClient.BASE_URL).rstrip("/") + "/",
        timeout=timeout,
        # Every attempt is one Notification row and retries are ours (Celery, honouring
        # Retry-After), so the SDK must not retry behind our back.
        retry_handlers=[],
    )


def verifier() -> SignatureVerifier:
    return SignatureVerifier(settings.SLACK_SIGNING_SECRET, clock=CLOCK)


def base_url() -> str:
    """Absolute links in messages; Slack cannot follow a relative one."""
    return settings.CALIBER_BASE_URL or "http://localhost:8000"


def review_url(escalation_id: object) -> str:
    return f"{base_url()}/review/{escalation_id}/"


def task_queue() -> str | None:
    """Slack traffic may get its own workers so long agent tasks never delay an update."""
    return settings.SLACK_CELERY_QUEUE or None
