"""Mutations of escalations and policies, one module per domain (zulip's zerver/actions).

Everyone — views, the websocket consumer, the Slack endpoint, the API, tasks, commands and
tests — imports from here.
"""

from .decisions import AlreadyDecided, decide_escalation, escalate_action
from .policies import save_policy

__all__ = ["AlreadyDecided", "decide_escalation", "escalate_action", "save_policy"]
