"""The queue's queries and its one row partial, shared by the view and the consumer."""

from __future__ import annotations

from django.db.models import QuerySet
from django.template.loader import render_to_string

from escalations.access import AnyUser, escalations_for
from escalations.models import UNDECIDED_STATUSES, Escalation

QUEUE_LIMIT = 200


def open_escalations(user: AnyUser) -> QuerySet[Escalation]:
    return (
        escalations_for(user)
        .filter(status__in=UNDECIDED_STATUSES)
        .select_related("action", "action__run", "action__agent", "team", "claimed_by")
        .order_by("-created_at")
    )


def render_row(escalation: Escalation) -> str:
    return render_to_string("review/queue.html#row", {"esc": escalation})


def render_snapshot(user: AnyUser) -> str:
    qs = open_escalations(user)
    rows = list(qs[:QUEUE_LIMIT])
    return render_to_string(
        "review/queue.html#live-region", {"escalations": rows, "open_count": qs.count()}
    )
