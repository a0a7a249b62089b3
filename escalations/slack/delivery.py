"""Bringing each Slack message in line with its escalation, one recorded attempt at a time.

`sync_message` is idempotent: it renders from the database as it is now and calls Slack only
when what it would show differs from what Slack has, so duplicate tasks cost a query, not
a message. Retries are returned to the caller (the Celery task, which writes them to the
outbox) as a delay on the one delivery policy (workflows.retry.DELIVERY): Slack's
`Retry-After` on 429, its backoff on transient failures; permanent errors stop it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.error import URLError

from django.db.models import F, Q
from django.utils import timezone
from slack_sdk.errors import SlackApiError

from escalations.models import Decision, Escalation
from workflows.retry import DELIVERY, MAX_RETRY_AFTER

from . import blocks, conf
from .models import MessageStatus, Notification, SeenRequest, SlackMessage

log = logging.getLogger(__name__)

# Longer than any one round (a few HTTP calls with a 10 s timeout): if a worker dies holding
# it, the sweeper's next pass after expiry picks the message up.
LEASE = timedelta(seconds=90)
MAX_ROUNDS = 4
# The sweeper leaves fresh requests to the task that was enqueued for them.
SWEEP_GRACE = timedelta(seconds=20)
SEEN_REQUEST_TTL = timedelta(minutes=11)

# Slack errors worth another try; anything else Slack says "no" to is permanent
# (channel_not_found, not_in_channel, is_archived, invalid_auth, token_revoked,
# account_inactive, missing_scope, invalid_blocks, message_not_found, ...).
TRANSIENT_ERRORS = {
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
}


@dataclass(frozen=True)
class Attempt:
    ok: bool
    data: dict[str, Any]
    error: str = ""
    http_status: int | None = None
    retry_after: float | None = None
    permanent: bool = False

    @property
    def rate_limited(self) -> bool:
        return self.http_status == 429 or self.error == "ratelimited"


def call(method: str, *, timeout: int = 10, **kwargs: Any) -> tuple[Attempt, int]:
    """Call Slack once; classify what came back. Never raises for Slack's or the network's
    sake: the caller records the attempt either way. `timeout` in seconds."""
    started = time.monotonic()
    try:
        response = conf.client(timeout=timeout).api_call(method, json=kwargs)
        attempt = Attempt(ok=True, data=dict(response.data), http_status=response.status_code)  # type: ignore[arg-type]
    except SlackApiError as exc:
        attempt = _failed(exc)
    except (URLError, OSError) as exc:
        attempt = Attempt(ok=False, data={}, error=f"network: {exc}"[:300])
    return attempt, int((time.monotonic() - started) * 1000)


def _failed(exc: SlackApiError) -> Attempt:
    response = exc.response
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or f"HTTP {status}")[:300]
    retry_after = None
    if status == 429 or error == "ratelimited":
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        raw = headers.get("retry-after")
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        try:
            retry_after = min(max(float(raw), 0.0), MAX_RETRY_AFTER) if raw is not None else 30.0
        except ValueError:
            retry_after = 30.0
    permanent = status < 500 and status != 429 and error not in TRANSIENT_ERRORS
    return Attempt(
        ok=False,
        data=data,
        error=error,
        http_status=status,
        retry_after=retry_after,
        permanent=permanent,
    )


def _render_hash(text: str, rendered: list[dict[str, Any]]) -> str:
    raw = json.dumps([text, rendered], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def sync_message(*, message_id: int) -> float | None:
    """Post or update one message so it shows the escalation as it is now.

    Returns the delay after which it should run again, or None when there is nothing more to
    do (in sync, failed permanently, or someone else holds the lease and will loop).
    """
    if not conf.enabled():
        return None
    now = timezone.now()
    lease = now + LEASE
    claimed = (
        SlackMessage.objects.filter(
            pk=message_id, status__in=[MessageStatus.PENDING, MessageStatus.POSTED]
        )
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(lease_until=lease)
    )
    if not claimed:
        return None
    try:
        for _ in range(MAX_ROUNDS):
            in_sync, retry_in = _one_round(message_id, lease)
            if not in_sync:
                return retry_in
            # Let go only if nobody asked for another sync while we talked to Slack; their
            # task found our lease and left the work to us.
            released = SlackMessage.objects.filter(
                pk=message_id, lease_until=lease, sync_requested__lte=F("synced")
            ).update(lease_until=None)
            if (
                released
                or not SlackMessage.objects.filter(pk=message_id, lease_until=lease).exists()
            ):
                return None
        # Still being changed faster than we can show it: let a fresh task continue.
        return 0.0
    finally:
        SlackMessage.objects.filter(pk=message_id, lease_until=lease).update(lease_until=None)


def _one_round(message_id: int, lease: Any) -> tuple[bool, float | None]:
    """One render-and-call. Returns (in sync, retry_in): (True, None) when Slack shows what
    the message's `synced` counter says; otherwise whether and when to try again."""
    msg = SlackMessage.objects.filter(pk=message_id).first()
    if msg is None:
        return False, None  # the escalation was deleted meanwhile
    target = msg.sync_requested
    esc = Escalation.objects.select_related("action", "action__agent", "team", "claimed_by").get(
        pk=msg.escalation_id
    )
    decision = Decision.objects.filter(escalation=esc).select_related("decided_by").first()
    mine = SlackMessage.objects.filter(pk=message_id, lease_until=lease)
    now = timezone.now()

    if not msg.ts and (not esc.is_undecided or esc.team_id != msg.team_id):
        # Nothing left to ask this channel: never post a request that is already answered.
        mine.update(status=MessageStatus.SKIPPED, synced=target, updated_at=now)
        return False, None

    text, rendered = blocks.message(esc, for_team_id=msg.team_id, decision=decision)
    digest = _render_hash(text, rendered)
    if msg.ts and digest == msg.rendered_hash:
        mine.filter(synced__lt=target).update(synced=target, updated_at=now)
        return True, None

    if msg.ts:
        method = "chat.update"
        attempt, ms = call(method, channel=msg.channel_id, ts=msg.ts, text=text, blocks=rendered)
    else:
        method = "chat.postMessage"
        attempt, ms = call(
            method,
            channel=msg.channel,
            text=text,
            blocks=rendered,
            unfurl_links=False,
            unfurl_media=False,
            # Belt and braces with the escaping: never turn names in the text into mentions.
            link_names=False,
            parse="none",
        )

    if attempt.ok:
        Notification.objects.create(
            escalation_id=esc.pk,
            message_id=message_id,
            method=method,
            ok=True,
            http_status=attempt.http_status,
            duration_ms=ms,
        )
        fields: dict[str, Any] = {
            "status": MessageStatus.POSTED,
            "rendered_hash": digest,
            "failures": 0,
            "error": "",
            "next_attempt_at": None,
            "synced": target,
            "updated_at": now,
        }
        if method == "chat.postMessage":
            fields["channel_id"] = str(attempt.data.get("channel", ""))
            fields["ts"] = str(attempt.data.get("ts", ""))
        if not mine.update(**fields):
            return False, None  # lease lost: whoever holds it now carries on
        return True, None

    # A rate limit is Slack pacing us, not a failure of ours: it does not count.
    failures = msg.failures + (0 if attempt.rate_limited else 1)
    delay = (
        None
        if attempt.permanent
        else DELIVERY.next_delay(
            failures,
            retry_after=(attempt.retry_after or 30.0) if attempt.rate_limited else None,
        )
    )
    Notification.objects.create(
        escalation_id=esc.pk,
        message_id=message_id,
        method=method,
        ok=False,
        error=attempt.error,
        permanent=delay is None,
        http_status=attempt.http_status,
        retry_after=delay,
        duration_ms=ms,
    )
    if delay is None:
        error = attempt.error
        if not attempt.permanent:
            error = f"gave up after {failures} attempts: {error}"[:300]
        mine.update(status=MessageStatus.FAILED, error=error, failed_at=now, updated_at=now)
        log.warning("slack %s for escalation %s failed for good: %s", method, esc.pk, error)
        return False, None
    mine.update(
        error=attempt.error,
        next_attempt_at=now + timedelta(seconds=delay),
        failures=failures,
        updated_at=now,
    )
    # A hair late rather than early: an early retry would find next_attempt_at still ahead.
    return False, delay + 0.05


def post_ephemeral(*, escalation_id: str | None, channel: str, user: str, text: str) -> None:
    """Tell one person something only they see (a refusal, a 'too late'). Best effort: one
    attempt, recorded, never retried — a stale hint is worse than none."""
    if not conf.enabled() or not channel or not user:
        return
    attempt, ms = call("chat.postEphemeral", channel=channel, user=user, text=text)
    if escalation_id and Escalation.objects.filter(pk=escalation_id).exists():
        Notification.objects.create(
            escalation_id=escalation_id,
            method="chat.postEphemeral",
            ok=attempt.ok,
            error=attempt.error,
            permanent=not attempt.ok,
            http_status=attempt.http_status,
            duration_ms=ms,
        )


def stale_message_ids(*, escalation_id: str) -> list[int]:
    """The escalation's live messages that do not show its latest change yet."""
    return list(
        SlackMessage.objects.filter(
            escalation_id=escalation_id,
            status__in=[MessageStatus.PENDING, MessageStatus.POSTED],
            synced__lt=F("sync_requested"),
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def due_message_ids(*, now: Any = None) -> list[int]:
    """Messages whose task was lost or whose retry is due: the sweeper's work list."""
    now = now or timezone.now()
    return list(
        SlackMessage.objects.filter(
            status__in=[MessageStatus.PENDING, MessageStatus.POSTED],
            synced__lt=F("sync_requested"),
        )
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .filter(
            Q(next_attempt_at__lte=now)
            | Q(next_attempt_at__isnull=True, requested_at__lt=now - SWEEP_GRACE)
        )
        .order_by("requested_at")
        .values_list("pk", flat=True)[:500]
    )


def prune_seen_requests(*, now: Any = None) -> int:
    now = now or timezone.now()
    deleted, _ = SeenRequest.objects.filter(received_at__lt=now - SEEN_REQUEST_TTL).delete()
    return deleted
