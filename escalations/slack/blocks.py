"""The Block Kit a reviewer sees: a specific request, packaged for deciding, not an alert.

Every piece of user or agent text goes through mrkdwn.escape; every mrkdwn object is
`verbatim` so Slack does not auto-link or auto-mention inside it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from escalations.models import Decision, Escalation, EscalationStatus, Verdict
from workflows.tools import ToolError, get_action_type

from .conf import review_url
from .mrkdwn import escape, escape_within, plain_within, quote

APPROVE = "caliber.approve"
REJECT = "caliber.reject"
OPEN = "caliber.open"
ACTIONS_BLOCK = "caliber.decide"
REJECT_CALLBACK = "caliber.reject"
REASON_BLOCK = "reason"
REASON_INPUT = "reason"

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


def _payload_text(payload: dict[str, Any]) -> str:
    lines = []
    for key, value in payload.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = escape_within(shown, VALUE_LIMIT)
        if "\n" in text or len(text) > 80:
            lines.append(f"*{escape_within(key, 100)}*\n{quote(text)}")
        else:
            lines.append(f"*{escape_within(key, 100)}*: {text}")
    body = "\n".join(lines) or "_(no payload)_"
    head = "*What the agent proposes*\n"
    if len(head) + len(body) > SECTION_LIMIT:
        body = body[: SECTION_LIMIT - len(head) - 40].rsplit("\n", 1)[0]
        body += "\n_…more in Caliber_"
    return head + body


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
        {"type": "section", "text": md(_payload_text(dict(action.payload)))},
    ]
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
        text = escape_within(f"{label}: {esc.status}", TEXT_LIMIT)
        if moved:
            outcome += f"\n_Moved to {escape_within(esc.team.name, 200)} before the decision._"
        blocks.append({"type": "section", "block_id": "caliber.outcome", "text": md(outcome)})
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
            {"type": "button", "action_id": OPEN, "text": plain("Edit in browser"), "url": url},
        ],
    }


def reject_modal(esc: Escalation, *, channel_id: str = "") -> dict[str, Any]:
    """The modal behind Reject: Slack buttons carry no text, and a reject needs a reason."""
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": json.dumps({"escalation": str(esc.pk), "channel": channel_id}),
        "title": plain("Reject", 24),
        "submit": plain("Reject", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            {
                "type": "section",
                "text": md(f"*{escape(_label(esc))}*\n" + escape_within(esc.summary, 2500)),
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": plain("Why? The agent is told.", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": 2000,
                },
            },
        ],
    }


def notice_modal(title: str, text: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "title": plain(title, 24),
        "close": plain("Close", 24),
        "blocks": [{"type": "section", "text": md(text)}],
    }
