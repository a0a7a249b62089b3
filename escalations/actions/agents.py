"""Agent autonomy: the kill switch."""

from __future__ import annotations

import logging

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from workflows.actions import record_trace
from workflows.models import Action, ActionStatus, PolicyOutcome, TraceKind, WorkflowRun

from ..models import AgentProfile
from ..policy import policy_as_evaluated
from .decisions import escalate_action

log = logging.getLogger(__name__)


def set_autonomy_paused(*, agent_id: int, paused: bool, by: User, reason: str = "") -> AgentProfile:
    """Pause (or resume) every autonomous action of one agent, at once, on the record.

    Takes effect immediately: evaluation reads the switch from the database on the very next
    action, and actions already approved to run alone but not yet executed are held back
    into review here (under their runs' locks, so none is mid-execution). Who, when and why
    is kept on the profile and in its history. Setting it to what it already is changes
    nothing.
    """
    reason = reason.strip()
    with transaction.atomic():
        agent = AgentProfile.objects.select_for_update().get(pk=agent_id)
        if agent.autonomy_paused == paused:
            return agent
        now = timezone.now()
        agent.autonomy_paused = paused
        agent.autonomy_paused_at = now if paused else None
        agent.autonomy_paused_by = by if paused else None
        agent.autonomy_pause_reason = reason if paused else ""
        agent._history_user = by  # type: ignore[attr-defined]
        agent._change_reason = (  # type: ignore[attr-defined]
            ("kill switch ON" if paused else "kill switch off") + (f": {reason}" if reason else "")
        )
        agent.save(
            update_fields=[
                "autonomy_paused",
                "autonomy_paused_at",
                "autonomy_paused_by",
                "autonomy_pause_reason",
            ]
        )
        log.warning(
            "autonomy of agent %s %s by %s%s",
            agent.name,
            "PAUSED" if paused else "resumed",
            by.get_username(),
            f": {reason}" if reason else "",
        )
        if not paused:
            return agent

        run_ids = list(
            Action.objects.filter(
                agent=agent, status=ActionStatus.AUTO_APPROVED, run__isnull=False
            ).values_list("run_id", flat=True)
        )
        # The engine executes under the run's lock: taking it means nothing is mid-flight,
        # and ordering by id keeps two pausers from deadlocking.
        locked = WorkflowRun.objects.select_for_update().filter(pk__in=run_ids).order_by("pk")
        for run in locked:
            for action in Action.objects.filter(
                run=run, agent=agent, status=ActionStatus.AUTO_APPROVED
            ):
                note = (
                    f"autonomy was paused for agent '{agent.name}' by {by.get_username()} "
                    "before this ran (kill switch)" + (f": {reason}" if reason else "")
                )
                action.status = ActionStatus.ESCALATED
                action.outcome = PolicyOutcome.REVIEW
                action.reasons = [note, *action.reasons]
                action.save(update_fields=["status", "outcome", "reasons"])
                policy = policy_as_evaluated(action.policy_id, action.policy_version)
                team_id = (policy.team_id if policy else None) or agent.team_id
                record_trace(
                    run=run,
                    kind=TraceKind.POLICY,
                    step_name=action.step_name,
                    actor=by.get_username(),
                    message=f"{action.action_type}: held back for review — {note}",
                    data={"action": str(action.pk), "outcome": PolicyOutcome.REVIEW},
                )
                escalate_action(action=action, team_id=team_id)
    return agent
