"""The pre-summarised context a reviewer reads first (deterministic template offline)."""

from __future__ import annotations

from workflows.models import Action
from workflows.tools import get_action_type


def summarise(action: Action, reasons: list[str]) -> str:
    tool = get_action_type(action.action_type)
    doing = ""
    if action.run is not None:
        doing = f"Working on “{action.run.title}” ({action.run.workflow}). "
    stakes = [
        "reversible" if tool.reversible else "irreversible",
        "customer-facing" if tool.customer_facing else "internal",
    ]
    return (
        f"{doing}The agent proposes to {tool.label.lower()} "
        f"with confidence {action.confidence:.2f}. "
        f"Escalated because {'; '.join(reasons)}. "
        f"At stake: {', '.join(stakes)}."
    )
