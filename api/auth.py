"""Bearer-token authentication: `Authorization: Bearer cal_...` -> the ApiToken, or 401.

Guessing is throttled: an address that presents API_AUTH_FAILURES_PER_MINUTE bad tokens in a
minute gets 429 with Retry-After for every token it presents until the minute is over, good
ones included (a guesser must learn nothing, not even that one guess was right).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from .models import ApiToken, hash_token

log = logging.getLogger(__name__)

# last_used_at is for people auditing tokens; minute resolution spares a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
THROTTLE_WINDOW_SECONDS = 60


class Throttled(Exception):
    """Too many bad tokens from one address; api.views answers 429 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed token attempts; retry in {retry_after} s.")
        self.retry_after = retry_after


def _window(request: HttpRequest) -> tuple[str, int]:
    """This address's failure counter for the current fixed window, and the seconds left."""
    now = time.time()
    window = int(now // THROTTLE_WINDOW_SECONDS)
    left = THROTTLE_WINDOW_SECONDS - int(now % THROTTLE_WINDOW_SECONDS)
    # REMOTE_ADDR is the peer daphne saw (or, with --proxy-headers, what the proxy reported).
    address = request.META.get("REMOTE_ADDR") or "unknown"
    return f"api-auth-failures:{address}:{window}", left


def _check_throttle(request: HttpRequest) -> None:
    key, left = _window(request)
    try:
        failures = cache.get(key, 0)
    except Exception:  # the cache (Redis) is down: authenticate without the brake
        log.warning("token throttle unavailable", exc_info=True)
        return
    if failures >= settings.API_AUTH_FAILURES_PER_MINUTE:
        raise Throttled(left)


def _count_failure(request: HttpRequest) -> None:
    key, _ = _window(request)
    try:
        cache.add(key, 0, timeout=THROTTLE_WINDOW_SECONDS + 1)
        cache.incr(key)
    except Exception:
        log.warning("token throttle unavailable", exc_info=True)


def token_for(raw: str) -> ApiToken | None:
    if not raw or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("agent", "user")
        .filter(key_hash=hash_token(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
    return token


class TokenAuth(HttpBearer):
    openapi_description = "An API token: `manage.py create_api_token --agent NAME` or the admin."

    def __call__(self, request: HttpRequest) -> ApiToken | None:
        # ninja's own __call__ logs a malformed header in DEBUG, token and all.
        scheme, _, raw = request.headers.get(self.header, "").partition(" ")
        if scheme.lower() != self.openapi_scheme:
            return None
        return self.authenticate(request, raw.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        _check_throttle(request)
        found = token_for(token)
        if found is None:
            _count_failure(request)
        return found


def token_of(request: HttpRequest) -> ApiToken:
    """The authenticated token; only called from operations that require auth."""
    token = getattr(request, "auth", None)
    assert isinstance(token, ApiToken)
    return token
