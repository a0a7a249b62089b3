"""SLA timers: when nobody decided in time, the escalation moves down its chain, and at the
end of the chain the policy's declared expiry behaviour applies.

The timer is `Escalation.sla_due_at`, a database column scanned by beat (escalations.tasks);
each due escalation is handled under its row lock and re-checked there, so a decision racing
the timer and two schedulers racing each other all end with exactly one outcome.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from workflows.models import TraceKind
from workflows.settle import lock_run

from .. import notify
from ..models import (
    UNDECIDED_STATUSES,
    Escalation,
    EscalationStatus,
    ExpiryBehaviour,
    ServiceAccount,
    ServiceAccountKind,
    Team,
    Verdict,
    Via,
)
from .decisions import AlreadyDecided, RunLocked, finalise_decision, trace_escalation

log = logging.getLogger(__name__)

SYSTEM_USERNAME = "caliber-system"


def system_user() -> User:
    """Who decides when a policy's expiry behaviour does: an inactive account nobody can log
    in as, so every Decision still names a decider and audits read plainly."""
    user = User.objects.filter(username=SYSTEM_USERNAME).first()
    if user is None:
        try:
            with transaction.atomic():
                user = User(username=SYSTEM_USERNAME, is_active=False, first_name="Caliber")
                user.set_unusable_password()
                user.save()
        except IntegrityError:
            user = User.objects.get(username=SYSTEM_USERNAME)
    # The database lets this account (and no other service account) decide, via "system".
    ServiceAccount.objects.get_or_create(user=user, defaults={"kind": ServiceAccountKind.SYSTEM})
    return user


def _trace(escalation: Escalation, kind: TraceKind, message: str, **data: object) -> None:
    trace_escalation(escalation.action, escalation, message, kind=kind, actor="caliber", **data)


def _move(escalation: Escalation, *, team: Team, now: datetime, due: datetime | None) -> int:
    """Hand it to `team` with a fresh claimless start. Precondition: the row lock is held."""
    previous_team_id = escalation.team_id
    escalation.team = team
    escalation.status = EscalationStatus.OPEN
    escalation.claimed_by = None
    escalation.claimed_at = None
    escalation.sla_due_at = due
    escalation.save(
        update_fields=["team", "status", "claimed_by", "claimed_at", "sla_due_at", "hops"]
    )
    return previous_team_id


def handle_sla_breach(*, escalation_id: uuid.UUID | str, now: datetime | None = None) -> str:
    """Apply what a passed SLA means for one escalation; returns what happened.

    'moved' (next team in the chain), 'rerouted', 'approved' / 'rejected' (the declared
    expiry behaviour, decided by the system user), 'breached' (no behaviour declared: it
    stays where it is, never decided implicitly) or 'nothing' (decided, moved or re-timed
    meanwhile: the re-check under the lock found no breach).
    """
    now = now or timezone.now()
    with transaction.atomic():
        # The run's row before the escalation's, as every decision takes them (a person's
        # decision racing this one would otherwise wait on it the other way round).
        run_id = (
            Escalation.objects.filter(pk=escalation_id)
            .values_list("action__run_id", flat=True)
            .first()
        )
        run = RunLocked(status=lock_run(run_id)) if run_id is not None else None
        escalation = (
            Escalation.objects.select_for_update()
            .filter(pk=escalation_id, status__in=UNDECIDED_STATUSES, sla_due_at__lte=now)
            .first()
        )
        if escalation is None:
            return "nothing"
        old_team_name = escalation.team.name
        minutes = escalation.sla_minutes or 0
        next_team_id = escalation.next_team_id
        if next_team_id is not None:
            team = Team.objects.get(pk=next_team_id)
            escalation.hops += 1
            due = now + timedelta(minutes=minutes) if minutes else None
            previous = _move(escalation, team=team, now=now, due=due)
            _trace(
                escalation,
                TraceKind.ESCALATED,
                f"no decision within {minutes} min at {old_team_name}: escalated to "
                f"{team.name} (step {escalation.hops} of {len(escalation.chain)} in the chain)",
                from_team=previous,
                to_team=team.pk,
            )
            notify.escalation_changed(escalation, previous_team_id=previous)
            notify.escalation_opened(escalation)
            return "moved"

        behaviour = escalation.expiry_behaviour
        if behaviour == ExpiryBehaviour.REROUTE and escalation.expiry_team_id is not None:
            team = Team.objects.get(pk=escalation.expiry_team_id)
            # The end of the line: it stays open there with no further timer, so it can
            # never bounce between teams forever.
            previous = _move(escalation, team=team, now=now, due=None)
            _trace(
                escalation,
                TraceKind.ESCALATED,
                f"no decision within {minutes} min at {old_team_name}, the end of the chain: "
                f"re-routed to {team.name} as the policy declares",
                from_team=previous,
                to_team=team.pk,
            )
            notify.escalation_changed(escalation, previous_team_id=previous)
            notify.escalation_opened(escalation)
            return "rerouted"

        if behaviour in (ExpiryBehaviour.APPROVE, ExpiryBehaviour.REJECT):
            verdict = Verdict.APPROVE if behaviour == ExpiryBehaviour.APPROVE else Verdict.REJECT
            action_type = escalation.action.action_type
            reason = (
                f"nobody decided within the {minutes} min SLA at the end of the escalation "
                f"chain; the policy declares: {behaviour} on expiry"
            )
            try:
                finalise_decision(
                    escalation=escalation,
                    user=system_user(),
                    verdict=verdict,
                    via=Via.SYSTEM,
                    reason=reason,
                    new_status=EscalationStatus.EXPIRED,
                    run=run,
                    actor="caliber",
                    message=f"SLA expired at {old_team_name}: {action_type} "
                    f"{'approved' if verdict == Verdict.APPROVE else 'rejected'} "
                    f"automatically ({reason})",
                )
            except AlreadyDecided:
                return "nothing"
            return "approved" if verdict == Verdict.APPROVE else "rejected"

        Escalation.objects.filter(pk=escalation.pk).update(sla_due_at=None)
        escalation.sla_due_at = None
        _trace(
            escalation,
            TraceKind.SYSTEM,
            f"SLA of {minutes} min breached at {old_team_name}; no expiry behaviour is "
            "declared, so it stays open there",
        )
        notify.escalation_changed(escalation)
        return "breached"


def expire_due_escalations(*, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Handle every escalation whose SLA has passed, each in its own transaction."""
    now = now or timezone.now()
    due = list(
        Escalation.objects.filter(status__in=UNDECIDED_STATUSES, sla_due_at__lte=now)
        .order_by("sla_due_at")
        .values_list("pk", flat=True)[:limit]
    )
    counts: dict[str, int] = {}
    for pk in due:
        try:
            what = handle_sla_breach(escalation_id=pk, now=now)
        except Exception:
            # One broken escalation must not stall every other team's timers.
            log.exception("SLA handling failed for escalation %s", pk)
            what = "failed"
        counts[what] = counts.get(what, 0) + 1
    return counts
