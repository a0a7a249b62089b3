"""Mutations of escalations and policies, one module per domain (zulip's zerver/actions).

Everyone — views, the websocket consumer, the Slack endpoint, the API, tasks, commands and
tests — imports from here.
"""

from .agents import set_autonomy_paused
from .audits import audit_after_execution, hold_for_audit
from .bulk import BulkOutcome, decide_escalations, irreversible_among
from .claims import AlreadyClaimed, claim_escalation, reassign_escalation, release_escalation
from .decisions import (
    AlreadyDecided,
    TooLateToUndo,
    decide_escalation,
    escalate_action,
    read_along,
    read_along_value,
    undo_approval,
)
from .policies import restore_policy_version, save_policy
from .sla import expire_due_escalations, handle_sla_breach, system_user

__all__ = [
    "AlreadyClaimed",
    "AlreadyDecided",
    "BulkOutcome",
    "TooLateToUndo",
    "audit_after_execution",
    "claim_escalation",
    "decide_escalation",
    "decide_escalations",
    "escalate_action",
    "expire_due_escalations",
    "handle_sla_breach",
    "hold_for_audit",
    "irreversible_among",
    "read_along",
    "read_along_value",
    "reassign_escalation",
    "release_escalation",
    "restore_policy_version",
    "save_policy",
    "set_autonomy_paused",
    "system_user",
    "undo_approval",
]
