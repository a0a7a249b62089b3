"""Changing autonomy policies."""

from __future__ import annotations

from django.utils import timezone

from ..models import AutonomyPolicy


def save_policy(*, policy: AutonomyPolicy, changed_fields: list[str]) -> AutonomyPolicy:
    """Every change to a policy is a new version; actions keep the version they were held to."""
    if policy.pk is not None and changed_fields:
        policy.version = (
            AutonomyPolicy.objects.filter(pk=policy.pk).values_list("version", flat=True).get() + 1
        )
    policy.updated_at = timezone.now()
    policy.save()
    return policy
