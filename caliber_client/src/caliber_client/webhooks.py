"""Verifying Caliber's webhooks on the receiving side.

Caliber signs each attempt: `Caliber-Timestamp: <unix seconds>` and
`Caliber-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "Caliber-Signature"
TIMESTAMP_HEADER = "Caliber-Timestamp"
DEFAULT_TOLERANCE = 300


class InvalidSignature(Exception):
    """The body was not signed with this secret, or the signature is too old (a replay)."""


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    *,
    secret: str,
    body: bytes | str,
    timestamp: str | None,
    signature: str | None,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise InvalidSignature unless `signature` signs `body` at `timestamp`, within
    `tolerance` seconds of now. Pass the raw body bytes, before any JSON parsing."""
    if not timestamp or not signature:
        raise InvalidSignature("missing Caliber-Timestamp or Caliber-Signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("Caliber-Timestamp is not a Unix time") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise InvalidSignature(f"signature is {int(current - sent_at)} s old (replay?)")
    expected = sign(secret, sent_at, body)
    # Several `v1=` values may be sent (secret rotation); any one matching is enough.
    candidates = [part.strip() for part in signature.split(",")]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def verify_webhook(
    *,
    secret: str,
    body: bytes | str,
    headers: Mapping[str, str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Verify a webhook request and return its JSON event:
    `{"id", "event": "action.decided", "created_at", "action": {...}}`. Deduplicate on `id`:
    a retried or re-sent delivery carries the same one."""
    verify_signature(
        secret=secret,
        body=body,
        timestamp=_header(headers, TIMESTAMP_HEADER),
        signature=_header(headers, SIGNATURE_HEADER),
        tolerance=tolerance,
    )
    event = json.loads(body)
    if not isinstance(event, dict):
        raise InvalidSignature("the body is not a JSON object")
    return event
