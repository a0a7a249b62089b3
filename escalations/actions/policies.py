"""Changing autonomy policies: every change is a new version, kept with who, when and what."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from ..models import AutonomyPolicy

# What an admin edits; a change to any of these makes a new version.
VERSIONED_FIELDS = [
    f.attname
    for f in AutonomyPolicy._meta.concrete_fields
    if f.name not in {"id", "version", "updated_at"}
]


def changed_fields(policy: AutonomyPolicy) -> list[str]:
    """What differs between `policy` in memory and its row in the database."""
    if policy.pk is None:
        return list(VERSIONED_FIELDS)
    stored = AutonomyPolicy.objects.filter(pk=policy.pk).values(*VERSIONED_FIELDS).first()
    if stored is None:
        return list(VERSIONED_FIELDS)
    return [f for f in VERSIONED_FIELDS if stored[f] != getattr(policy, f)]


def save_policy(
    *,
    policy: AutonomyPolicy,
    user: User | None = None,
    reason: str = "",
) -> AutonomyPolicy:
    """Validate and save; an actual change to an existing policy is a new version.

    Actions keep the version they were evaluated under; the history keeps every version
    with who made it and why. Saving with nothing changed writes nothing: what changed is
    judged against the row in the database (`changed_fields`), under its row lock.
    """
    policy.full_clean()
    with transaction.atomic():
        if policy.pk is not None:
            current = (
                AutonomyPolicy.objects.select_for_update()
                .filter(pk=policy.pk)
                .values_list("version", flat=True)
                .first()
            )
            if current is not None:
                if not _differs(policy):
                    return policy
                policy.version = current + 1
            else:
                # Restoring a deleted policy: its numbering carries on from its history.
                last = AutonomyPolicy.history.filter(id=policy.pk).aggregate(v=Max("version"))
                policy.version = (last["v"] or 0) + 1
        else:
            policy.version = 1
        policy.updated_at = timezone.now()
        if user is not None:
            policy._history_user = user  # type: ignore[attr-defined]
        if reason:
            policy._change_reason = reason  # type: ignore[attr-defined]
        policy.save()
    return policy


def _differs(policy: AutonomyPolicy) -> bool:
    return bool(changed_fields(policy))


def restore_policy_version(*, policy_id: int, version: int, user: User) -> AutonomyPolicy:
    """Make version `version` current again — as a new version, so history only grows."""
    record = (
        AutonomyPolicy.history.filter(id=policy_id, version=version)
        .exclude(history_type="-")
        .order_by("-history_id")
        .first()
    )
    if record is None:
        raise ValidationError(f"policy {policy_id} has no version {version}")
    policy = AutonomyPolicy.objects.filter(pk=policy_id).first()
    if policy is None:
        policy = AutonomyPolicy(pk=policy_id)
    values: dict[str, Any] = {f: getattr(record, f) for f in VERSIONED_FIELDS}
    for name, value in values.items():
        setattr(policy, name, value)
    return save_policy(policy=policy, user=user, reason=f"restored from v{version}")
