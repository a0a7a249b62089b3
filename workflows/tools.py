"""The action types agents may propose, declared with what is at stake.

Risk comes from this declaration, never from what the model says about its own action.
The demo tools stand in for a CRM, a mail gateway and a ticket router: they compute the
effect they would have and the engine records it in the effect ledger, exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ToolError(Exception):
    """The tool refused the payload; the action fails with this message."""


class RenderKind:
    """How a reviewer sees an action of a type: as what it is, not as its JSON.

    The kinds are declared here with the tool; `escalations.rendering` turns a payload into
    what the queue row, the detail page, the edit form and Slack all show.
    """

    # A message to a person: `to`, `subject`, `body` (plain text, line breaks kept).
    EMAIL = "email"
    # Fields written on a record: `record` names it; every other key is a proposed value.
    FIELD_DIFF = "field_diff"
    # A hand-over: `to` (where it goes) and optionally `from`; the rationale is the reason.
    ROUTE = "route"
    # Anything else: the payload as a readable tree.
    TREE = "tree"


@dataclass(frozen=True)
class Rendering:
    kind: str = RenderKind.TREE
    # role -> payload key, e.g. {"to": "to", "subject": "title", "body": "body"}; roles
    # whose key is absent from a payload are simply not shown (or, for an email's subject,
    # read from the ticket being answered).
    fields: tuple[tuple[str, str], ...] = ()

    def key(self, role: str) -> str | None:
        return dict(self.fields).get(role)


@dataclass(frozen=True)
class ActionType:
    name: str
    label: str
    reversible: bool
    customer_facing: bool
    required_fields: tuple[str, ...]
    execute: Callable[[dict[str, Any], str], dict[str, Any]]
    # The payload field holding what is at stake in money (policies' maximum amount and
    # quorum thresholds read it); None: the action moves no money.
    amount_field: str | None = None
    rendering: Rendering = Rendering()
    # How long an approved irreversible action waits before it runs, so the reviewer can
    # still undo the approval (settings.UNDO_WINDOW_SECONDS overrides it for every type).
    # Reversible actions run at once.
    undo_seconds: float = 10.0
    # What happens instead when a person rejects it (or answers it until the agent's rounds
    # run out): given the payload and who takes the work over, the effect to record. None:
    # nothing, the action is only skipped.
    fallback: Callable[[dict[str, Any], str], dict[str, Any]] | None = None
    fallback_label: str = ""

    def validate(self, payload: object) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ToolError(f"{self.name} needs a JSON object payload")
        missing = [f for f in self.required_fields if f not in payload]
        if missing:
            raise ToolError(f"{self.name} payload is missing: {', '.join(missing)}")
        return payload


def _digest(payload: dict[str, Any], key: str) -> str:
    raw = json.dumps(payload, sort_keys=True) + key
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _update_crm(payload: dict[str, Any], key: str) -> dict[str, Any]:
    fields = {k: v for k, v in payload.items() if k != "ticket_id"}
    return {"crm_record": payload["ticket_id"], "updated_fields": sorted(fields)}


def _send_reply(payload: dict[str, Any], key: str) -> dict[str, Any]:
    if not str(payload.get("body", "")).strip():
        raise ToolError("send_reply needs a non-empty body")
    return {"message_id": f"msg-{_digest(payload, key)}", "to": payload["to"]}


def _hand_to_owner(payload: dict[str, Any], owner: str) -> dict[str, Any]:
    """A customer who gets no reply from the agent gets one from a person: the ticket is
    assigned to a named owner (the demo's ticket system records the assignment)."""
    return {"ticket_id": payload.get("ticket_id"), "assigned_to": owner, "status": "open"}


def _route_to_team(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {"routed_to": payload["team"], "ticket_id": payload["ticket_id"]}


def _issue_refund(payload: dict[str, Any], key: str) -> dict[str, Any]:
    try:
        amount = float(payload["amount"])
    except (TypeError, ValueError):
        raise ToolError("issue_refund needs a numeric amount") from None
    if amount <= 0:
        raise ToolError("issue_refund needs a positive amount")
    return {"refund_id": f"rf-{_digest(payload, key)}", "amount": amount}


ACTION_TYPES: dict[str, ActionType] = {
    t.name: t
    for t in (
        ActionType(
            name="update_crm",
            label="Update CRM record",
            reversible=True,
            customer_facing=False,
            required_fields=("ticket_id",),
            execute=_update_crm,
            rendering=Rendering(RenderKind.FIELD_DIFF, (("record", "ticket_id"),)),
        ),
        ActionType(
            name="send_reply",
            label="Send reply to customer",
            reversible=False,
            customer_facing=True,
            required_fields=("ticket_id", "to", "body"),
            execute=_send_reply,
            rendering=Rendering(
                RenderKind.EMAIL, (("to", "to"), ("subject", "subject"), ("body", "body"))
            ),
            fallback=_hand_to_owner,
            fallback_label="Hand the ticket to a person",
        ),
        ActionType(
            name="route_to_team",
            label="Route ticket to a team",
            reversible=True,
            customer_facing=False,
            required_fields=("ticket_id", "team"),
            execute=_route_to_team,
            rendering=Rendering(RenderKind.ROUTE, (("to", "team"), ("from", "from_team"))),
        ),
        ActionType(
            name="issue_refund",
            label="Refund the customer",
            reversible=False,
            customer_facing=True,
            required_fields=("ticket_id", "amount"),
            execute=_issue_refund,
            amount_field="amount",
            fallback=_hand_to_owner,
            fallback_label="Hand the ticket to a person",
        ),
    )
}


def get_action_type(name: str) -> ActionType:
    try:
        return ACTION_TYPES[name]
    except KeyError:
        raise ToolError(f"unknown action type {name!r}") from None
