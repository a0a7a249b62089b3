"""Leases on runs and steps: who owns one (host, pid, a unique part) and for how long."""

from __future__ import annotations

import os
import socket
import uuid

from django.conf import settings

LEASE_MARGIN_SECONDS = 5.0


def lease_seconds() -> float:
    return float(getattr(settings, "RUN_LEASE_SECONDS", 30))


def stall_seconds() -> float:
    return float(getattr(settings, "RUN_STALL_SECONDS", 60))


def new_owner() -> str:
    """A lease owner: where it runs (host, pid — an operator can find it) and a unique part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"
