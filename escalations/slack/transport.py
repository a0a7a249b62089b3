"""Slack as a transport behind escalations.notify.

Called inside the transaction that changed the escalation: writes the delivery rows (one
SlackMessage per channel, counters bumped) and the task send (a workflows.outbox row) in
that transaction; the send goes out after commit. Nothing here talks to Slack.
"""

from __future__ import annotations

import logging

from django.db.models import F
from django.utils import timezone

from escalations.models import Escalation
from workflows.events import Event

from . import conf
from .models import MessageStatus, SlackMessage
from .tasks import enqueue_sync_escalation

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
    bumped = _bump(escalation, exclude=created_id)
    if created_id is not None or bumped:
        _enqueue_after_commit(escalation)


def escalation_changed(escalation: Escalation, *, previous_team_id: int | None = None) -> None:
    """Every message of the escalation must show the change (decided, moved, claimed...)."""
    if not conf.enabled():
        return
    if previous_team_id is not None and previous_team_id != escalation.team_id:
        # A move, by an SLA chain or a person: the new team must see it in its channel
        # whether or not the caller also announces it as opened (that second call is a no-op).
        escalation_opened(escalation)
        return
    if _bump(escalation):
        _enqueue_after_commit(escalation)


def _bump(escalation: Escalation, *, exclude: int | None = None) -> int:
    """Ask for one more sync of each live message. One UPDATE, whose row count says whether
    there is anything to deliver: it runs inside every deciding transaction, Slack's ack
    waiting on some of them."""
    qs = SlackMessage.objects.filter(escalation=escalation, status__in=LIVE)
    if exclude is not None:
        qs = qs.exclude(pk=exclude)
    return qs.update(sync_requested=F("sync_requested") + 1, requested_at=timezone.now())


def _enqueue_after_commit(escalation: Escalation) -> None:
    # An outbox row: a broker hiccup never turns a recorded decision into an error page, and
    # the send is relayed once the broker is back. One send per escalation, not per channel.
    enqueue_sync_escalation(str(escalation.pk))


def on_opened(event: Event) -> None:
    """Subscribed to escalations.notify.OPENED (in the transaction: the rows are the outbox)."""
    escalation_opened(event.subject)


def on_changed(event: Event) -> None:
    """Subscribed to escalations.notify.CHANGED (in the transaction: the rows are the outbox)."""
    previous = event.ids.get("previous_team_id")
    escalation_changed(
        event.subject, previous_team_id=previous if isinstance(previous, int) else None
    )
