"""Bearer-token authentication: `Authorization: Bearer cal_...` -> the ApiToken, or 401."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from .models import ApiToken, hash_token

# last_used_at is for people auditing tokens; minute resolution spares a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


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
        return token_for(token)


def token_of(request: HttpRequest) -> ApiToken:
    """The authenticated token; only called from operations that require auth."""
    token = getattr(request, "auth", None)
    assert isinstance(token, ApiToken)
    return token
