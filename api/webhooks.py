"""The webhook transport: sign a body, POST it, say what happened. Nothing here writes.

Signature: `Caliber-Signature: v1=<hex>` where hex = HMAC-SHA256(secret, f"{timestamp}.{body}")
and `Caliber-Timestamp` is the Unix time of this attempt, so a receiver can refuse replays
(caliber_client.verify_webhook does both checks).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from .models import WebhookDelivery

TIMEOUT_SECONDS = 10.0
SIGNATURE_HEADER = "Caliber-Signature"
TIMESTAMP_HEADER = "Caliber-Timestamp"
USER_AGENT = "Caliber-Webhooks/1"


def sign(*, secret: str, timestamp: int, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1=" + mac.hexdigest()


@dataclass(frozen=True)
class PostOutcome:
    status_code: int | None
    error: str
    excerpt: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post_signed(*, url: str, secret: str, body: str, delivery: WebhookDelivery) -> PostOutcome:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Caliber-Event": delivery.event,
        "Caliber-Delivery": str(delivery.pk),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
    }
    try:
        # No redirects: a signed body is for the URL the admin configured, nowhere else.
        response = httpx.post(
            url,
            content=body.encode(),
            headers=headers,
            timeout=TIMEOUT_SECONDS,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        return PostOutcome(None, f"{type(exc).__name__}: {exc}"[:1000], "")
    error = "" if response.is_success else f"HTTP {response.status_code}"
    return PostOutcome(response.status_code, error, response.text[:500])
