"""An action as a reviewer judges it: a reply as an email, a CRM update as a field diff, a
routing as from -> to, anything else as a readable tree.

The kind is declared with the tool (`workflows.tools.Rendering`); this module turns one
payload into a `Proposal`, and every surface shows that: the queue row (its gist), the
detail page and its edit form (review templates), and Slack (escalations.slack.blocks).
Values stay plain text here; each surface escapes for its own medium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workflows.tools import ACTION_TYPES, Rendering, RenderKind

GIST_LIMIT = 140
_GREETING = re.compile(r"^(hi|hello|hey|dear|good (morning|afternoon|evening))\b.{0,40}$", re.I)
_NOT_SET = "(not set)"


@dataclass(frozen=True)
class DiffLine:
    key: str
    current: str
    proposed: str

    @property
    def changed(self) -> bool:
        return self.current != self.proposed


@dataclass(frozen=True)
class TreeNode:
    key: str
    value: str | None = None  # None: a branch, see children
    children: tuple[TreeNode, ...] = ()


@dataclass(frozen=True)
class EditField:
    """One payload key the edit form offers, in the order the reviewer reads them."""

    key: str
    label: str
    multiline: bool = False


@dataclass(frozen=True)
class Proposal:
    kind: str
    label: str
    # email
    to: str = ""
    subject: str = ""
    # True when the subject is not in the payload but read from the ticket being answered.
    subject_derived: bool = False
    body: str = ""
    # field diff
    record: str = ""
    diff: tuple[DiffLine, ...] = ()
    # route
    route_from: str = ""
    route_to: str = ""
    reason: str = ""
    # tree: the whole payload; other kinds: the payload keys they do not show themselves
    tree: tuple[TreeNode, ...] = ()
    edit_fields: tuple[EditField, ...] = field(default=())

    @property
    def is_email(self) -> bool:
        return self.kind == RenderKind.EMAIL

    @property
    def is_diff(self) -> bool:
        return self.kind == RenderKind.FIELD_DIFF

    @property
    def is_route(self) -> bool:
        return self.kind == RenderKind.ROUTE

    @property
    def is_tree(self) -> bool:
        return self.kind == RenderKind.TREE

    @property
    def body_lines(self) -> list[str]:
        return self.body.splitlines()

    @property
    def focus_key(self) -> str | None:
        """The field the `e` key puts the cursor in: the body of a message, else the first."""
        multiline = [f.key for f in self.edit_fields if f.multiline]
        if multiline:
            return multiline[0]
        return self.edit_fields[0].key if self.edit_fields else None

    @property
    def gist(self) -> str:
        """The proposal's first line, for a queue row or a notification."""
        if self.is_email:
            lines = [line.strip() for line in self.body_lines if line.strip()]
            # "Hi Ada," says nothing about the reply: its first line after the greeting does.
            if len(lines) > 1 and _GREETING.match(lines[0]):
                lines = lines[1:]
            first = lines[0] if lines else ""
            head = f"Reply to {self.to}: " if self.to else f"{self.subject}: "
            return clip(head + first)
        if self.is_diff:
            changes = ", ".join(f"{d.key} → {d.proposed}" for d in self.diff if d.changed)
            return clip(
                f"Set {changes or 'nothing new'}" + (f" on {self.record}" if self.record else "")
            )
        if self.is_route:
            return clip(f"Route {self.route_from or '?'} → {self.route_to}")
        return clip(", ".join(_gist_of(node) for node in self.tree) or "(empty payload)")


def clip(text: str, limit: int = GIST_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _text(value: Any) -> str:
    if value is None:
        return _NOT_SET
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value, ensure_ascii=False)


def _gist_of(node: TreeNode) -> str:
    if node.value is not None:
        return f"{node.key}: {node.value}"
    return f"{node.key}: {len(node.children)} items"


def tree(value: Any, depth: int = 0) -> tuple[TreeNode, ...]:
    """A JSON value as nested key/value nodes (lists by position), bounded in depth."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(f"{i + 1}.", v) for i, v in enumerate(value)]
    else:
        return (TreeNode(key="", value=_text(value)),)
    nodes = []
    for key, item in items:
        if isinstance(item, (dict, list)) and item and depth < 6:
            nodes.append(TreeNode(key=str(key), children=tree(item, depth + 1)))
        else:
            shown = _text(item) if not isinstance(item, (dict, list)) else json.dumps(item)
            nodes.append(TreeNode(key=str(key), value=shown))
    return tuple(nodes)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def render_proposal(
    action_type: str,
    payload: Mapping[str, Any],
    *,
    ticket: Mapping[str, Any] | None = None,
    rationale: str = "",
    home_team: str = "",
) -> Proposal:
    """`payload` as its tool declares it should be seen.

    `ticket` is the run's input (what the customer sent), `home_team` the team the ticket
    sits with now (the agent's), `rationale` the agent's reason for routing.
    """
    tool = ACTION_TYPES.get(action_type)
    rendering = tool.rendering if tool is not None else Rendering()
    label = tool.label if tool is not None else action_type
    payload = dict(payload) if isinstance(payload, Mapping) else {}
    ticket = ticket if isinstance(ticket, Mapping) else {}
    if rendering.kind == RenderKind.EMAIL:
        return _email(label, rendering, payload, ticket)
    if rendering.kind == RenderKind.FIELD_DIFF:
        return _diff(label, rendering, payload, ticket)
    if rendering.kind == RenderKind.ROUTE:
        return _route(label, rendering, payload, rationale, home_team)
    return Proposal(
        kind=RenderKind.TREE,
        label=label,
        tree=tree(payload),
        edit_fields=tuple(EditField(k, k) for k, v in payload.items() if _scalar(v)),
    )


def _rest(payload: dict[str, Any], shown: set[str]) -> tuple[TreeNode, ...]:
    return tree({k: v for k, v in payload.items() if k not in shown})


def _email(
    label: str, rendering: Rendering, payload: dict[str, Any], ticket: Mapping[str, Any]
) -> Proposal:
    keys = {role: rendering.key(role) for role in ("to", "subject", "body")}
    shown = {k for k in keys.values() if k and k in payload}
    subject_key = keys["subject"]
    derived = not (subject_key and subject_key in payload)
    if derived:
        asked = str(ticket.get("subject") or "").strip()
        subject = f"Re: {asked}" if asked else ""
    else:
        subject = _text(payload[subject_key])  # type: ignore[index]
    edit = [
        EditField(k, role.capitalize(), multiline=role == "body")
        for role, k in keys.items()
        if k and k in payload and _scalar(payload[k])
    ]
    # The body first: it is what a reviewer edits.
    edit.sort(key=lambda f: not f.multiline)
    edit += [EditField(k, k) for k, v in payload.items() if k not in shown and _scalar(v)]
    return Proposal(
        kind=RenderKind.EMAIL,
        label=label,
        to=_text(payload.get(keys["to"] or "", "")) if keys["to"] in payload else "",
        subject=subject,
        subject_derived=derived,
        body=_text(payload.get(keys["body"] or "", "")),
        tree=_rest(payload, shown),
        edit_fields=tuple(edit),
    )


def _diff(
    label: str, rendering: Rendering, payload: dict[str, Any], ticket: Mapping[str, Any]
) -> Proposal:
    record_key = rendering.key("record")
    record = _text(payload[record_key]) if record_key and record_key in payload else ""
    # What the record holds now, as far as Caliber knows it: the ticket as it came in.
    lines = tuple(
        DiffLine(key=k, current=_text(ticket.get(k)), proposed=_text(v))
        for k, v in payload.items()
        if k != record_key
    )
    return Proposal(
        kind=RenderKind.FIELD_DIFF,
        label=label,
        record=record,
        diff=lines,
        edit_fields=tuple(EditField(d.key, d.key) for d in lines if _scalar(payload[d.key])),
    )


def _route(
    label: str, rendering: Rendering, payload: dict[str, Any], rationale: str, home_team: str
) -> Proposal:
    to_key, from_key = rendering.key("to"), rendering.key("from")
    shown = {k for k in (to_key, from_key) if k}
    route_from = _text(payload[from_key]) if from_key and from_key in payload else home_team
    return Proposal(
        kind=RenderKind.ROUTE,
        label=label,
        route_from=route_from,
        route_to=_text(payload.get(to_key)) if to_key else "",
        reason=rationale,
        tree=_rest(payload, shown | {"ticket_id"}),
        edit_fields=tuple(
            EditField(k, "To" if k == to_key else k) for k in (to_key,) if k in payload
        ),
    )


def short_reason(reason: str) -> str:
    """A policy reason in a few words: what differs from row to row, not the sentence."""
    for pattern, words in _SHORT_REASONS:
        m = pattern.search(reason)
        if m:
            return words.format(*m.groups())
    return clip(reason, 48)


_SHORT_REASONS = [
    (
        re.compile(r"^audit sample \((\S+) of .*(after it ran|before it runs)\)"),
        "audit sample ({0}), {1}",
    ),
    (re.compile(r"confidence (\d\.\d+) < (\d\.\d+)"), "confidence {0} < {1}"),
    (re.compile(r"is irreversible"), "irreversible"),
    (re.compile(r"matches block pattern '([^']{0,30})"), "blocked word “{0}”"),
    (re.compile(r"matches review pattern '([^']{0,30})"), "matched “{0}”"),
    (re.compile(r"always requires review"), "always reviewed"),
    (re.compile(r"^\S+ (\S+) > (\S+), the most"), "amount {0} > {1}"),
    (re.compile(r"has no numeric"), "no amount given"),
    (re.compile(r"rate cap reached"), "over the rate cap"),
    (re.compile(r"no autonomy policy covers"), "no policy covers it"),
    (re.compile(r"autonomy is paused"), "agent paused"),
]


def why_of(reasons: Any) -> str:
    """The row's why: each reason in a few words, the policy's bookkeeping left out."""
    reasons = reasons if isinstance(reasons, list) else []
    shown = [short_reason(str(r)) for r in reasons if "other matching policies" not in str(r)]
    return " · ".join(dict.fromkeys(shown))


# WorkflowRun.title's fields, in its order.
_TITLE_FIELDS = ("subject", "company", "title")


def queue_card(
    *,
    action_type: str,
    payload: Any,
    ticket: Any,
    reasons: Any,
    agent: str,
    workflow: str,
    confidence: float,
    rationale: str = "",
    home_team: str = "",
) -> dict[str, str]:
    """What a queue row shows of an escalation that never changes while it waits (the
    proposal, the ticket, why), worked out once when it is opened and stored on it
    (`Escalation.card`): the queue reads fifty of these a page, and building each from the
    payload and the run's input cost more than the rest of the page. The type, agent and
    workflow ride along so the queue's facet counts need no join either.

    What does change while it waits (team, claim, SLA, status) is read from the row."""
    ticket = ticket if isinstance(ticket, Mapping) else {}
    payload = payload if isinstance(payload, Mapping) else {}
    customer = str(ticket.get("customer") or "")
    message = str(ticket.get("body") or "")
    title = next((str(ticket[k]) for k in _TITLE_FIELDS if ticket.get(k)), workflow or agent)
    proposal = render_proposal(
        action_type,
        payload,
        ticket={"subject": title, "customer": customer},
        rationale=rationale,
        home_team=home_team,
    )
    first_line = next((line for line in message.splitlines() if line.strip()), "")
    return {
        "type": action_type,
        "agent": agent,
        "workflow": workflow,
        "title": clip(title, 200),
        "customer": clip(customer, 120),
        "line": clip(first_line, 120),
        "gist": proposal.gist,
        "why": why_of(reasons) or "policy requires review",
        "confidence": f"{confidence:.2f}",
    }


def _home_team(action: Any) -> str:
    """The agent's team, where the proposal shows it (a routing's "from"): read only then, so
    opening any other escalation costs no query for it."""
    tool = ACTION_TYPES.get(action.action_type)
    if tool is None or tool.rendering.kind != RenderKind.ROUTE:
        return ""
    agent = action.agent
    return agent.team.name if agent is not None and agent.team_id else ""


def card_for_action(action: Any) -> dict[str, str]:
    """queue_card() of an `Action` (with its run and agent)."""
    run = action.run
    agent = action.agent
    return queue_card(
        action_type=action.action_type,
        payload=action.payload,
        ticket=run.input if run is not None else None,
        reasons=list(action.reasons or []),
        agent=agent.name if agent is not None else "",
        workflow=run.workflow if run is not None else "",
        confidence=action.confidence,
        rationale=action.rationale,
        home_team=_home_team(action),
    )


def proposal_for_action(action: Any, payload: Mapping[str, Any] | None = None) -> Proposal:
    """The proposal of an `Action` (its run's input and its agent's team read from it);
    `payload`: another version of it (a reviewer's edit) rendered the same way."""
    run = action.run
    return render_proposal(
        action.action_type,
        action.payload if payload is None else payload,
        ticket=run.input if run is not None else None,
        rationale=action.rationale,
        home_team=_home_team(action),
    )
