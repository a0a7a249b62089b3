"""API tokens: created (the raw value shown once) and revoked. A reviewer token decides as
a named person, never a service account."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.utils import timezone

from escalations.models import AgentProfile, ServiceAccount

from ..models import ApiToken, hash_token, new_raw_token


class NotAReviewer(ValueError):
    """A reviewer token must name the person it decides as."""


def check_reviewer(user: User | None) -> None:
    """Raise NotAReviewer unless `user` is an active person's account (no service account)."""
    if user is None:
        raise NotAReviewer("A reviewer token decides as a named person: choose its user.")
    if not user.is_active or ServiceAccount.objects.filter(user_id=user.pk).exists():
        raise NotAReviewer(f"{user.get_username()} is not an active person's account.")


def create_api_token(
    *, agent: AgentProfile, name: str = "", reviewer: bool = False, user: User | None = None
) -> tuple[ApiToken, str]:
    """Returns the token and its raw value, which exists nowhere else: show it once.

    A reviewer token decides as `user`, a person: NotAReviewer if none is named, or if it is
    a service account or inactive. It still never decides escalations of `agent`'s actions.
    """
    if reviewer:
        check_reviewer(user)
    raw = new_raw_token()
    token = ApiToken.objects.create(
        name=name,
        agent=agent,
        prefix=raw[: len("cal_") + 8],
        key_hash=hash_token(raw),
        reviewer=reviewer,
        user=user if reviewer else None,
    )
    return token, raw


def revoke_api_token(*, token: ApiToken) -> bool:
    """Revoke at once; True if this call revoked it (False: it already was)."""
    now = timezone.now()
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if revoked:
        token.revoked_at = now
    return bool(revoked)
