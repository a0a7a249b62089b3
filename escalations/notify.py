"""The one place that tells the outside world an escalation changed.

Every transport hangs off these two functions: the live queue (review.live), and — when
configured — Slack and agent webhooks. Each sends after commit only; callers hold the
transaction that made the change.
"""

from __future__ import annotations

from .models import Escalation


def escalation_opened(escalation: Escalation) -> None:
    """A new escalation exists (or reached a new team). Called inside the creating transaction."""
    from review.live import announce_escalation

    from .slack import transport as slack

    announce_escalation(escalation)
    slack.escalation_opened(escalation)


def escalation_changed(escalation: Escalation, *, previous_team_id: int | None = None) -> None:
    """Claimed, released, decided, expired, reassigned... Called inside the changing transaction.

    `previous_team_id`: set when the escalation moved teams, so the old team's queues drop it.
    """
    from api import hooks as api_hooks
    from review.live import announce_escalation

    from .slack import transport as slack

    announce_escalation(escalation, previous_team_id=previous_team_id)
    slack.escalation_changed(escalation, previous_team_id=previous_team_id)
    # Once decided: wakes the API's long-polls of the action, queues its agent's webhook.
    api_hooks.escalation_changed(escalation)
