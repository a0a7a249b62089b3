"""Who is working on an escalation: claiming, releasing and reassigning it to another team.

A claim is a soft lock that tells teammates "I'm on it"; it never stops a teammate from
deciding (decide_escalation accepts both open and claimed escalations), so an absent
claimant can never strand work. Each change is a conditional UPDATE whose row count says
who won, so two reviewers clicking "claim" at once get one winner and one clear answer.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from workflows.models import TraceKind

from .. import notify
from ..access import get_escalation_for, sees_everything
from ..models import UNDECIDED_STATUSES, Escalation, EscalationStatus, Team
from .decisions import AlreadyDecided, trace_escalation


class AlreadyClaimed(Exception):
    """Someone else claimed it first; `escalation.claimed_by` says who."""

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        who = escalation.claimed_by.get_username() if escalation.claimed_by else "someone"
        super().__init__(f"already claimed by {who}")


def _trace(escalation: Escalation, user: User, message: str, **data: object) -> None:
    trace_escalation(
        escalation.action,
        escalation,
        message,
        kind=TraceKind.HUMAN,
        actor=user.get_username(),
        **data,
    )


def _refused(escalation: Escalation) -> Exception:
    escalation.refresh_from_db()
    if not escalation.is_undecided:
        return AlreadyDecided(escalation)
    return AlreadyClaimed(escalation)


def claim_escalation(*, escalation_id: uuid.UUID | str, user: User) -> Escalation:
    """Mark an undecided escalation as being worked on by `user`.

    Claiming what you already hold changes nothing (a double click is harmless). Raises
    Http404 if `user` may not see it, AlreadyClaimed if a teammate holds it, AlreadyDecided
    if it was decided meanwhile.
    """
    with transaction.atomic():
        escalation = get_escalation_for(user, escalation_id)
        if escalation.status == EscalationStatus.CLAIMED and escalation.claimed_by_id == user.pk:
            return escalation
        now = timezone.now()
        won = Escalation.objects.filter(pk=escalation.pk, status=EscalationStatus.OPEN).update(
            status=EscalationStatus.CLAIMED, claimed_by=user, claimed_at=now
        )
        if not won:
            raise _refused(escalation)
        escalation.status = EscalationStatus.CLAIMED
        escalation.claimed_by = user
        escalation.claimed_at = now
        _trace(escalation, user, f"{user.get_username()} claimed {escalation.action.action_type}")
        notify.escalation_changed(escalation)
    return escalation


def release_escalation(*, escalation_id: uuid.UUID | str, user: User) -> Escalation:
    """Put a claimed escalation back in the team's queue.

    The claimant may release it; so may an admin (someone went home with it claimed).
    Releasing an open one changes nothing.
    """
    with transaction.atomic():
        escalation = get_escalation_for(user, escalation_id)
        if escalation.status == EscalationStatus.OPEN:
            return escalation
        holders = Escalation.objects.filter(pk=escalation.pk, status=EscalationStatus.CLAIMED)
        if not sees_everything(user):
            holders = holders.filter(claimed_by=user)
        won = holders.update(status=EscalationStatus.OPEN, claimed_by=None, claimed_at=None)
        if not won:
            raise _refused(escalation)
        escalation.status = EscalationStatus.OPEN
        escalation.claimed_by = None
        escalation.claimed_at = None
        _trace(escalation, user, f"{user.get_username()} released {escalation.action.action_type}")
        notify.escalation_changed(escalation)
    return escalation


def reassign_escalation(
    *, escalation_id: uuid.UUID | str, user: User, team_id: int, note: str = ""
) -> Escalation:
    """Hand an undecided escalation to another team; any claim on it is dropped.

    Only someone who may see the escalation can move it, to any team. The SLA due time is
    kept: the customer's clock does not restart because the work changed hands.
    """
    note = note.strip()
    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        raise ValidationError({"team": "No such team."})
    with transaction.atomic():
        escalation = get_escalation_for(user, escalation_id)
        previous_team_id = escalation.team_id
        if previous_team_id == team.pk:
            raise ValidationError({"team": f"It is already with {team.name}."})
        won = Escalation.objects.filter(
            pk=escalation.pk, status__in=UNDECIDED_STATUSES, team_id=previous_team_id
        ).update(team=team, status=EscalationStatus.OPEN, claimed_by=None, claimed_at=None)
        if not won:
            escalation.refresh_from_db()
            if not escalation.is_undecided:
                raise AlreadyDecided(escalation)
            raise ValidationError({"team": "It was moved meanwhile; reload and try again."})
        previous_name = escalation.team.name
        escalation.team = team
        escalation.status = EscalationStatus.OPEN
        escalation.claimed_by = None
        escalation.claimed_at = None
        _trace(
            escalation,
            user,
            f"{user.get_username()} reassigned {escalation.action.action_type} "
            f"from {previous_name} to {team.name}" + (f": {note}" if note else ""),
            from_team=previous_team_id,
            to_team=team.pk,
        )
        notify.escalation_changed(escalation, previous_team_id=previous_team_id)
    return escalation
