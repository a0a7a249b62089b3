"""The one place that tells the outside world an escalation changed.

Publishes through the neutral events module (workflows.events); the transports subscribe
at app start: Slack here (escalations.apps), the live queue (review.apps), the agent API's
long-polls and webhooks (api.apps). Callers hold the transaction that made the change.
"""

from __future__ import annotations

from workflows import events

from .models import Escalation

OPENED = "escalation.opened"
CHANGED = "escalation.changed"
# Only its summary changed (the model's arrived after commit): live views refresh it.
SUMMARISED = "escalation.summarised"


def _publish(name: str, escalation: Escalation, previous_team_id: int | None) -> None:
    events.publish(
        name,
        subject=escalation,
        escalation_id=str(escalation.pk),
        action_id=str(escalation.action_id),
        team_id=escalation.team_id,
        previous_team_id=previous_team_id,
        decided=not escalation.is_undecided,
    )


def escalation_opened(escalation: Escalation) -> None:
    """A new escalation exists (or reached a new team). Called inside the creating transaction."""
    _publish(OPENED, escalation, None)


def escalation_changed(escalation: Escalation, *, previous_team_id: int | None = None) -> None:
    """Claimed, released, decided, expired, reassigned... Called inside the changing transaction.

    `previous_team_id`: set when the escalation moved teams, so the old team's queues drop it.
    """
    _publish(CHANGED, escalation, previous_team_id)


def escalation_summarised(escalation: Escalation) -> None:
    """The model's summary replaced the template. Called inside the writing transaction."""
    _publish(SUMMARISED, escalation, None)
