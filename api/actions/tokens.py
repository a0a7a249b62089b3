"""API tokens: created (the raw value shown once), revoked, and the service account a
reviewer token decides as when no person is named."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.utils import timezone

from escalations.models import AgentProfile

from ..models import ApiToken, hash_token, new_raw_token


def service_user_for(agent: AgentProfile) -> User:
    """The account a reviewer token decides as when no person is named: `api-<agent>`, a
    member of the agent's team, with no password (it can never log in to the web UI)."""
    user, created = User.objects.get_or_create(username=f"api-{agent.name}")
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    agent.team.members.add(user)
    return user


def create_api_token(
    *, agent: AgentProfile, name: str = "", reviewer: bool = False, user: User | None = None
) -> tuple[ApiToken, str]:
    """Returns the token and its raw value, which exists nowhere else: show it once."""
    if reviewer and user is None:
        user = service_user_for(agent)
    raw = new_raw_token()
    token = ApiToken.objects.create(
        name=name,
        agent=agent,
        prefix=raw[: len("cal_") + 8],
        key_hash=hash_token(raw),
        reviewer=reviewer,
        user=user,
    )
    return token, raw


def revoke_api_token(*, token: ApiToken) -> bool:
    """Revoke at once; True if this call revoked it (False: it already was)."""
    now = timezone.now()
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if revoked:
        token.revoked_at = now
    return bool(revoked)
