"""The Block Kit a reviewer sees: a specific request, packaged for deciding, not an alert.

Every piece of user or agent text goes through mrkdwn.escape; every mrkdwn object is
`verbatim` so Slack does not auto-link or auto-mention inside it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils import timezone

from escalations.models import Decision, Escalation, EscalationStatus, Verdict, reported_status
from escalations.rendering import Proposal, TreeNode, proposal_for_action
from workflows.tools import ToolError, get_action_type

from .conf import review_url
from .mrkdwn import escape, escape_within, plain_within, quote

APPROVE = "caliber.approve"
REJECT = "caliber.reject"
EDIT = "caliber.edit"
RESPOND = "caliber.respond"
# Takes back an approval while its irreversible action waits out its undo window.
UNDO = "caliber.undo"
OPEN = "caliber.open"
ACTIONS_BLOCK = "caliber.decide"
UNDO_BLOCK = "caliber.undo"
REJECT_CALLBACK = "caliber.reject"
EDIT_CALLBACK = "caliber.edit"
RESPOND_CALLBACK = "caliber.respond"
REASON_BLOCK = "reason"
REASON_INPUT = "reason"
# An edit modal's input for payload key k: block "field:k", action "value".
FIELD_BLOCK_PREFIX = "field:"
FIELD_INPUT = "value"
# Slack's plain_text_input holds at most this many characters.
INPUT_LIMIT = 3000

SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
VALUE_LIMIT = 600
TEXT_LIMIT = 3000

Block = dict[str, Any]

VIA_LABEL = {
    "web": "in the browser",
    "slack": "in Slack",
    "api": "via the API",
}
OUTCOME = {
    EscalationStatus.APPROVED: ":white_check_mark: *Approved*",
    EscalationStatus.REJECTED: ":x: *Rejected*",
    EscalationStatus.EXPIRED: ":hourglass: *Expired*: nobody decided in time",
    EscalationStatus.CANCELLED: ":no_entry_sign: *Cancelled*",
}


def md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": plain_within(text, limit), "emoji": True}


def slack_date(when: datetime) -> str:
    """Shown in each reader's own time zone, with a UTC fallback for old clients."""
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _stakes(esc: Escalation) -> str:
    action = esc.action
    try:
        tool = get_action_type(action.action_type)
    except ToolError:
        return "unknown action type"
    parts = [
        "reversible" if tool.reversible else ":warning: *irreversible*",
        ":warning: *customer-facing*" if tool.customer_facing else "internal",
    ]
    if tool.amount_field and tool.amount_field in action.payload:
        parts.append(f"amount *{escape_within(action.payload[tool.amount_field], 100)}*")
    return " · ".join(parts)


def _label(esc: Escalation) -> str:
    try:
        return get_action_type(esc.action.action_type).label
    except ToolError:
        return esc.action.action_type


def _tree_lines(nodes: tuple[TreeNode, ...], depth: int = 0) -> list[str]:
    lines = []
    pad = "    " * depth
    for node in nodes:
        key = f"*{escape_within(node.key, 100)}*" if node.key else ""
        if node.children:
            lines.append(f"{pad}{key}")
            lines += _tree_lines(node.children, depth + 1)
            continue
        text = escape_within(node.value or "", VALUE_LIMIT)
        sep = ": " if key else ""
        if "\n" in text or len(text) > 80:
            lines.append(f"{pad}{key}\n{quote(text)}")
        else:
            lines.append(f"{pad}{key}{sep}{text}")
    return lines


def proposal_text(proposal: Proposal) -> str:
    """The proposal as mrkdwn: the same rendering the browser shows, in Slack's terms."""
    if proposal.is_email:
        lines = []
        if proposal.to:
            lines.append(f"*To:* {escape_within(proposal.to, 300)}")
        lines.append(f"*Subject:* {escape_within(proposal.subject or '(no subject)', 300)}")
        # The body as text, its line breaks kept: never a JSON string.
        lines.append(quote(escape_within(proposal.body, 2000)))
    elif proposal.is_diff:
        lines = [f"*Record:* {escape_within(proposal.record, 100)}"] if proposal.record else []
        for d in proposal.diff:
            now = escape_within(d.current, 200)
            new = escape_within(d.proposed, 300)
            lines.append(
                f"• *{escape_within(d.key, 100)}*: ~{now}~ → *{new}*"
                if d.changed
                else f"• *{escape_within(d.key, 100)}*: {new} (unchanged)"
            )
    elif proposal.is_route:
        lines = [
            f"*{escape_within(proposal.route_from or '(unassigned)', 200)}* → "
            f"*{escape_within(proposal.route_to, 200)}*"
        ]
        if proposal.reason:
            lines.append(f"_Why:_ {escape_within(proposal.reason, 600)}")
    else:
        lines = []
    if proposal.tree:
        if lines:
            lines.append("_Also in the payload:_")
        lines += _tree_lines(proposal.tree)
    body = "\n".join(lines) or "_(no payload)_"
    head = "*What the agent proposes*\n"
    if len(head) + len(body) > SECTION_LIMIT:
        body = body[: SECTION_LIMIT - len(head) - 40].rsplit("\n", 1)[0]
        body += "\n_…more in Caliber_"
    return head + body


def _customer_text(esc: Escalation) -> str | None:
    run = esc.action.run
    ticket = run.input if run is not None and isinstance(run.input, dict) else {}
    if not (ticket.get("body") or ticket.get("subject")):
        return None
    who = escape_within(ticket.get("customer") or "the customer", 200)
    subject = escape_within(ticket.get("subject") or "", 300)
    body = quote(escape_within(ticket.get("body") or "", 1200))
    return f"*{who} wrote*" + (f" — {subject}" if subject else "") + "\n" + body


def _reasons_text(reasons: list[Any]) -> str:
    head = "*Why it needs a person*\n"
    body = "\n".join(f"• {escape_within(r, 400)}" for r in reasons) or "• (no reason recorded)"
    if len(head) + len(body) > SECTION_LIMIT:
        body = body[: SECTION_LIMIT - len(head) - 20].rsplit("\n", 1)[0] + "\n• …"
    return head + body


def _who(decision: Decision) -> str:
    user = decision.decided_by
    return escape_within(user.get_full_name() or user.get_username(), 150)


def outcome_text(esc: Escalation, decision: Decision | None) -> str | None:
    """What replaced the buttons, or None while the escalation still awaits a decision."""
    if esc.is_undecided:
        return None
    head = OUTCOME.get(EscalationStatus(esc.status), escape(esc.status))
    if decision is None:
        when = slack_date(esc.decided_at) if esc.decided_at else ""
        return f"{head} {when}".strip()
    if decision.via == "system":
        # Nobody clicked anything: say what the deadline did, and the policy's reason.
        text = f"{head} · {slack_date(decision.created_at)}"
        if decision.reason:
            text += "\n" + quote(escape_within(decision.reason, 1500))
        return text
    if decision.verdict == Verdict.RESPOND:
        head = ":speech_balloon: *Answered instead of running*"
    edited = " with edits" if decision.edited_payload is not None else ""
    text = (
        f"{head}{edited} by *{_who(decision)}* {VIA_LABEL.get(decision.via, decision.via)}"
        f" · {slack_date(decision.created_at)}"
    )
    if decision.reason:
        text += "\n" + quote(escape_within(decision.reason, 1500))
    return text


def message(
    esc: Escalation, *, for_team_id: int, decision: Decision | None
) -> tuple[str, list[Block]]:
    """The notification text and the blocks of the message in `for_team_id`'s channel.

    A message in a team's channel the escalation has since moved away from loses its buttons
    (that team may no longer decide it) and says where it went.
    """
    action = esc.action
    agent = action.agent
    url = review_url(esc.pk)
    label = _label(esc)
    text = escape_within(
        f"Review needed: {label} — {agent.name}, confidence {action.confidence:.2f}", TEXT_LIMIT
    )
    sla = slack_date(esc.sla_due_at) if esc.sla_due_at else "no deadline"
    blocks: list[Block] = [
        {"type": "header", "text": plain(f"Review: {label}", 150)},
        {"type": "section", "text": md(escape_within(esc.summary or label, SECTION_LIMIT))},
        {
            "type": "section",
            "fields": [
                md(
                    f"*Agent*\n{escape_within(agent.name, 200)} · trust {escape(agent.trust_level)}"
                ),
                md(f"*Confidence*\n{action.confidence:.2f}"),
                md(f"*Stakes*\n{_stakes(esc)}"),
                md(f"*Decide by*\n{sla}"),
                md(f"*Team*\n{escape_within(esc.team.name, 200)}"),
            ],
        },
        {"type": "section", "text": md(_reasons_text(list(esc.reasons)))},
    ]
    customer = _customer_text(esc)
    if customer is not None:
        blocks.append({"type": "section", "text": md(customer)})
    blocks.append({"type": "section", "text": md(proposal_text(proposal_for_action(action)))})
    if action.rationale:
        blocks.append(
            {
                "type": "context",
                "elements": [md("_Agent's rationale:_ " + escape_within(action.rationale, 2500))],
            }
        )
    outcome = outcome_text(esc, decision)
    moved = esc.team_id != for_team_id
    if outcome is not None:
        status = reported_status(esc.status, decision.verdict if decision else None)
        text = escape_within(f"{label}: {status}", TEXT_LIMIT)
        if moved:
            outcome += f"\n_Moved to {escape_within(esc.team.name, 200)} before the decision._"
        blocks.append({"type": "section", "block_id": "caliber.outcome", "text": md(outcome)})
        blocks.extend(_undo_blocks(esc, decision))
        blocks.append({"type": "context", "elements": [md(f"<{url}|Open in Caliber>")]})
    elif moved:
        blocks.append(
            {
                "type": "section",
                "block_id": "caliber.outcome",
                "text": md(
                    f":arrow_heading_up: *Moved to {escape_within(esc.team.name, 200)}*"
                    "; they decide it now."
                ),
            }
        )
        blocks.append({"type": "context", "elements": [md(f"<{url}|Open in Caliber>")]})
    else:
        if esc.needs_quorum:
            progress = esc.approval_progress()
            names = ", ".join(escape_within(n, 150) for n in progress["approved_by"])
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        md(
                            f":busts_in_silhouette: Needs {progress['required']} approvals from "
                            f"different reviewers; {len(progress['approved_by'])} so far"
                            + (f" ({names})" if names else "")
                        )
                    ],
                }
            )
        if esc.claimed_by_id is not None and esc.claimed_by is not None:
            who = escape_within(esc.claimed_by.get_username(), 150)
            blocks.append({"type": "context", "elements": [md(f":eyes: {who} is looking at it")]})
        blocks.append(_buttons(esc, url, irreversible=_irreversible(esc)))
    return text, blocks


def _undo_blocks(esc: Escalation, decision: Decision | None) -> list[Block]:
    """While an approved irreversible action waits out its undo window: when it runs, and
    the browser's Undo. A click after the window is refused (and the message refreshed)."""
    action = esc.action
    if decision is None or decision.verdict != Verdict.APPROVE:
        return []
    if action.execute_after is None or not action.in_undo_window(timezone.now()):
        return []
    when = action.execute_after
    at = f"<!date^{int(when.timestamp())}^{{time_secs}}|{when:%H:%M:%S} UTC>"
    return [
        {
            "type": "context",
            "elements": [md(f":hourglass_flowing_sand: Queued: runs at {at}. Undo until then.")],
        },
        {
            "type": "actions",
            "block_id": UNDO_BLOCK,
            "elements": [
                {
                    "type": "button",
                    "action_id": UNDO,
                    "text": plain("Undo"),
                    "value": str(esc.pk),
                }
            ],
        },
    ]


def _irreversible(esc: Escalation) -> bool:
    try:
        return not get_action_type(esc.action.action_type).reversible
    except ToolError:
        return True


def _buttons(esc: Escalation, url: str, *, irreversible: bool) -> Block:
    approve: Block = {
        "type": "button",
        "action_id": APPROVE,
        "style": "primary",
        "text": plain("Approve"),
        "value": str(esc.pk),
    }
    if irreversible:
        # One misclick must not send something that cannot be taken back.
        approve["confirm"] = {
            "title": plain("Approve?"),
            "text": md(f"{escape(_label(esc))} cannot be undone."),
            "confirm": plain("Approve"),
            "deny": plain("Not yet"),
        }
    return {
        "type": "actions",
        "block_id": ACTIONS_BLOCK,
        "elements": [
            approve,
            {
                "type": "button",
                "action_id": REJECT,
                "style": "danger",
                "text": plain("Reject…"),
                "value": str(esc.pk),
            },
            {
                "type": "button",
                "action_id": EDIT,
                "text": plain("Edit, then approve…"),
                "value": str(esc.pk),
            },
            {
                "type": "button",
                "action_id": RESPOND,
                "text": plain("Respond…"),
                "value": str(esc.pk),
            },
            {"type": "button", "action_id": OPEN, "text": plain("Open in Caliber"), "url": url},
        ],
    }


def reject_modal(esc: Escalation, *, channel_id: str = "") -> dict[str, Any]:
    """The modal behind Reject: Slack buttons carry no text, and a reject needs a reason."""
    return _modal(
        esc,
        channel_id,
        callback_id=REJECT_CALLBACK,
        title="Reject",
        submit="Reject",
        blocks=[
            {
                "type": "section",
                "text": md(f"*{escape(_label(esc))}*\n" + escape_within(esc.summary, 2500)),
            },
            _reason_input("Why? The agent is told.", required=True),
        ],
    )


def _modal(
    esc: Escalation,
    channel_id: str,
    *,
    callback_id: str,
    title: str,
    submit: str,
    blocks: list[Block],
) -> dict[str, Any]:
    """A modal about `esc` whose submission comes back to `callback_id` with a Cancel button."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": _meta(esc, channel_id),
        "title": plain(title, 24),
        "submit": plain(submit, 24),
        "close": plain("Cancel", 24),
        "blocks": blocks,
    }


def _reason_input(label: str, *, required: bool) -> Block:
    """The free-text input read back as the decision's reason: a required one is multi-line."""
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": REASON_INPUT,
        "multiline": required,
    }
    if required:
        element["min_length"] = 1
    element["max_length"] = 2000
    block: Block = {"type": "input", "block_id": REASON_BLOCK}
    if not required:
        block["optional"] = True
    block["label"] = plain(label, 2000)
    block["element"] = element
    return block


def _meta(esc: Escalation, channel_id: str) -> str:
    return json.dumps({"escalation": str(esc.pk), "channel": channel_id})


def field_block_id(key: str) -> str:
    return FIELD_BLOCK_PREFIX + key


def editable_in_slack(proposal: Proposal, payload: dict[str, Any]) -> bool:
    """Whether Slack's inputs can hold every field the edit form offers."""
    return bool(proposal.edit_fields) and all(
        len(str(payload.get(f.key) if payload.get(f.key) is not None else "")) <= INPUT_LIMIT
        for f in proposal.edit_fields
    )


def edit_modal(esc: Escalation, *, channel_id: str = "") -> dict[str, Any]:
    """Edit, then approve: the fields of the action's rendering (an email's body first, in a
    multi-line input), as the browser's edit form offers them."""
    action = esc.action
    proposal = proposal_for_action(action)
    irreversible = _irreversible(esc)
    intro = f"*{escape(_label(esc))}*: what you submit is what runs."
    if irreversible:
        intro += "\n:warning: *Cannot be undone*: submitting approves and runs it at once."
    blocks: list[Block] = [{"type": "section", "text": md(intro)}]
    for f in proposal.edit_fields:
        value = action.payload.get(f.key)
        element: dict[str, Any] = {
            "type": "plain_text_input",
            "action_id": FIELD_INPUT,
            "multiline": f.multiline,
            "max_length": INPUT_LIMIT,
        }
        if value is not None and str(value) != "":
            element["initial_value"] = value if isinstance(value, str) else json.dumps(value)
        blocks.append(
            {
                "type": "input",
                "block_id": field_block_id(f.key),
                "label": plain(f.label, 2000),
                "optional": True,
                "element": element,
            }
        )
    blocks.append(_reason_input("Note for the record (optional)", required=False))
    return _modal(
        esc,
        channel_id,
        callback_id=EDIT_CALLBACK,
        title="Edit, then approve",
        submit="Approve and send" if irreversible else "Approve edited",
        blocks=blocks,
    )


def respond_modal(esc: Escalation, *, channel_id: str = "") -> dict[str, Any]:
    """Answer the agent instead of running its action (the browser's Respond)."""
    return _modal(
        esc,
        channel_id,
        callback_id=RESPOND_CALLBACK,
        title="Respond",
        submit="Send to the agent",
        blocks=[
            {
                "type": "section",
                "text": md(
                    f"*{escape(_label(esc))}* will not run; the agent gets your answer and "
                    "revises.\n" + escape_within(esc.summary, 2500)
                ),
            },
            _reason_input("Your answer to the agent", required=True),
        ],
    )


def notice_modal(title: str, text: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "title": plain(title, 24),
        "close": plain("Close", 24),
        "blocks": [{"type": "section", "text": md(text)}],
    }
