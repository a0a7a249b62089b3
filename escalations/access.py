"""Who may see and decide what. Views, the websocket consumer and the API all ask here."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from workflows.models import Action, WorkflowRun

from .models import Escalation

AnyUser = User | AnonymousUser


def sees_everything(user: AnyUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_superuser", False))


def team_ids_for(user: AnyUser) -> list[int] | None:
    """The teams whose work this user reviews; None means every team (admins)."""
    if not user.is_authenticated:
        return []
    if sees_everything(user):
        return None
    assert isinstance(user, User)
    return list(user.teams.values_list("pk", flat=True))


def escalations_for(user: AnyUser) -> QuerySet[Escalation]:
    qs = Escalation.objects.all()
    teams = team_ids_for(user)
    return qs if teams is None else qs.filter(team_id__in=teams)


def get_escalation_for(user: AnyUser, pk: uuid.UUID | str) -> Escalation:
    """404, not 403, for another team's escalation: its existence is not the user's business."""
    try:
        return (
            escalations_for(user)
            .select_related("action", "action__run", "action__agent", "team", "claimed_by")
            .get(pk=pk)
        )
    except (Escalation.DoesNotExist, ValueError):
        raise Http404("No such escalation") from None


def runs_for(user: AnyUser) -> QuerySet[WorkflowRun]:
    qs = WorkflowRun.objects.all()
    teams = team_ids_for(user)
    if teams is None:
        return qs
    return qs.filter(agent__team_id__in=teams) | qs.filter(actions__escalation__team_id__in=teams)


def get_run_for(user: AnyUser, pk: uuid.UUID | str) -> WorkflowRun:
    try:
        return runs_for(user).distinct().select_related("agent").get(pk=pk)
    except (WorkflowRun.DoesNotExist, ValueError):
        raise Http404("No such run") from None


def actions_for(user: AnyUser) -> QuerySet[Action]:
    """The actions of the agents of this user's teams."""
    qs = Action.objects.all()
    teams = team_ids_for(user)
    return qs if teams is None else qs.filter(agent__team_id__in=teams)


def get_action_for(user: AnyUser, pk: uuid.UUID | str) -> Action:
    try:
        return actions_for(user).select_related("run").get(pk=pk)
    except (Action.DoesNotExist, ValueError):
        raise Http404("No such action") from None
