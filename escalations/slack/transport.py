"""Slack as a transport behind escalations.notify.

Called inside the transaction that changed the escalation: writes the outbox rows (one
SlackMessage per channel, counters bumped) in that transaction, and enqueues delivery only
after commit. Nothing here talks to Slack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from escalations.models import Escalation

from . import conf
from .models import MessageStatus, SlackMessage

log = logging.getLogger(__name__)

LIVE = [MessageStatus.PENDING, MessageStatus.POSTED]


def escalation_opened(escalation: Escalation) -> None:
    """Post to the escalation's team channel unless it already has a message there (an SLA
    chain may bring it back to a channel), and refresh the messages it already has."""
    if not conf.enabled():
        return
    channel = escalation.team.slack_channel.strip()
    created_id = None
    if channel:
        msg, created = SlackMessage.objects.get_or_create(
            escalation=escalation,
            channel=channel,
            defaults={"team_id": escalation.team_id},
        )
        if created:
            created_id = msg.pk
    others = _bump(escalation, exclude=created_id)
    _enqueue_after_commit([created_id, *others] if created_id else others)


def escalation_changed(escalation: Escalation, *, previous_team_id: int | None = None) -> None:
    """Every message of the escalation must show the change (decided, moved, claimed...)."""
    if not conf.enabled():
        return
    if previous_team_id is not None and previous_team_id != escalation.team_id:
        # A move, by an SLA chain or a person: the new team must see it in its channel
        # whether or not the caller also announces it as opened (that second call is a no-op).
        escalation_opened(escalation)
        return
    _enqueue_after_commit(_bump(escalation))


def _bump(escalation: Escalation, *, exclude: int | None = None) -> list[int]:
    qs = SlackMessage.objects.filter(escalation=escalation, status__in=LIVE)
    if exclude is not None:
        qs = qs.exclude(pk=exclude)
    ids = list(qs.values_list("pk", flat=True))
    if ids:
        SlackMessage.objects.filter(pk__in=ids).update(
            sync_requested=F("sync_requested") + 1, requested_at=timezone.now()
        )
    return ids


def _enqueue_after_commit(ids: Iterable[int]) -> None:
    ids = list(ids)
    if not ids:
        return

    def send() -> None:
        from .tasks import enqueue_sync

        for pk in ids:
            enqueue_sync(pk)

    # robust: a broker hiccup must not turn a recorded decision into an error page; the
    # outbox rows stay behind for the sweeper.
    transaction.on_commit(send, robust=True)
