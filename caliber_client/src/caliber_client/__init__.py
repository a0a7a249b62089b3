"""Caliber's Python client: ask Caliber's policies (and, when they say so, a person) before an
agent acts.

    caliber = Caliber("http://127.0.0.1:8000", token, agent="billing-bot")
    approval = caliber.wait(caliber.request_approval("send_reply", payload, confidence=0.9))
"""

from .client import Approval, AsyncCaliber, Caliber
from .decorators import require_approval
from .errors import (
    Answered,
    ApprovalTimeout,
    AuthenticationFailed,
    Blocked,
    CaliberError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Rejected,
)
from .webhooks import InvalidSignature, verify_signature, verify_webhook

__all__ = [
    "Answered",
    "Approval",
    "ApprovalTimeout",
    "AsyncCaliber",
    "AuthenticationFailed",
    "Blocked",
    "Caliber",
    "CaliberError",
    "Conflict",
    "InvalidRequest",
    "InvalidSignature",
    "NotFound",
    "PermissionDenied",
    "Rejected",
    "require_approval",
    "verify_signature",
    "verify_webhook",
]
