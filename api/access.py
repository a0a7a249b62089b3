"""What a token may see: its own agent's actions and runs; a reviewer token also sees what its
user may (escalations.access decides that). Everything else is a 404, never a 403."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import Http404

from escalations.access import get_run_for
from workflows.models import Action, WorkflowRun

from .models import ApiToken

ACTION_RELATED = (
    "agent",
    "escalation",
    "escalation__decision",
    "escalation__decision__decided_by",
    "api_submission",
)


def actions_for(token: ApiToken) -> QuerySet[Action]:
    return Action.objects.filter(agent_id=token.agent_id)


def get_action_for(token: ApiToken, pk: uuid.UUID | str) -> Action:
    try:
        return actions_for(token).select_related(*ACTION_RELATED).get(pk=pk)
    except (Action.DoesNotExist, ValueError):
        raise Http404("No such action") from None


def get_run_for_token(token: ApiToken, pk: uuid.UUID | str) -> WorkflowRun:
    run = WorkflowRun.objects.filter(pk=pk, agent_id=token.agent_id).first()
    if run is not None:
        return run
    if token.reviewer and token.user is not None:
        return get_run_for(token.user, pk)
    raise Http404("No such run")
