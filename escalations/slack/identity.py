"""Which Caliber reviewer a Slack user is: an admin's explicit link, else their Slack email
looked up once (users.info) and cached."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from slack_sdk.errors import SlackApiError

from . import conf
from .models import IdentitySource, SlackIdentity

log = logging.getLogger(__name__)

# A miss is remembered this long, so a flood of clicks from an unknown user costs Slack one
# lookup, yet someone who gets a Caliber account later can act soon after.
MISS_TTL = timedelta(minutes=10)
# The lookup runs inside Slack's 3-second ack window: keep it well inside.
LOOKUP_TIMEOUT = 2
# Slack's definite "no such person (for you)": remembered like any other miss.
UNKNOWN_USER = {"user_not_found", "user_not_visible", "account_inactive"}


def reviewer_for(slack_user_id: str) -> User | None:
    """The active Caliber user this Slack user is, or None (unlinked, unknown, inactive)."""
    if not slack_user_id:
        return None
    identity = (
        SlackIdentity.objects.select_related("user").filter(slack_user_id=slack_user_id).first()
    )
    if identity is not None:
        if identity.user is not None:
            return identity.user if identity.user.is_active else None
        if identity.source == IdentitySource.ADMIN:
            return None
        if identity.looked_up_at and identity.looked_up_at > timezone.now() - MISS_TTL:
            return None
    return _look_up(slack_user_id)


def _look_up(slack_user_id: str) -> User | None:
    info: dict[str, object] = {}
    try:
        response = conf.client(timeout=LOOKUP_TIMEOUT).users_info(user=slack_user_id)
        info = response.get("user") or {}
    except SlackApiError as exc:
        if exc.response.get("error") not in UNKNOWN_USER:
            # Not cached: Slack failing says nothing about who this is.
            log.warning("users.info for %s failed: %s", slack_user_id, exc)
            return None
    except OSError as exc:
        log.warning("users.info for %s failed: %s", slack_user_id, exc)
        return None
    email = ""
    if not info.get("deleted") and not info.get("is_bot"):
        profile = info.get("profile")
        email = str((profile if isinstance(profile, dict) else {}).get("email") or "").strip()
    user = None
    if email:
        matches = list(User.objects.filter(email__iexact=email, is_active=True)[:2])
        # Two accounts with one email: guessing would let the wrong person decide.
        user = matches[0] if len(matches) == 1 else None
    try:
        with transaction.atomic():
            # Never overwrite an admin's link (one may have appeared meanwhile).
            updated = SlackIdentity.objects.filter(
                slack_user_id=slack_user_id, source=IdentitySource.EMAIL
            ).update(user=user, email=email, looked_up_at=timezone.now())
            if (
                not updated
                and not SlackIdentity.objects.filter(slack_user_id=slack_user_id).exists()
            ):
                SlackIdentity.objects.create(
                    slack_user_id=slack_user_id,
                    user=user,
                    source=IdentitySource.EMAIL,
                    email=email,
                    looked_up_at=timezone.now(),
                )
    except IntegrityError:
        pass  # a concurrent click recorded the same lookup
    return user
