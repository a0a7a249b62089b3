"""What really happened to a decided escalation's action, for the reviewer's page.

Never a promise ("the run resumes"): what the ledger and the action say now — sent at a
time, queued with its undo window's end, handed to a named person, sent back to the agent
and revised (with a link to the revision), failed with its error.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from escalations.access import AnyUser
from escalations.actions.decisions import payload_diff
from escalations.models import ANSWERED, Decision, Escalation, Verdict, reported_status
from workflows.llm import OfflineModel
from workflows.models import Action, ActionStatus, Effect
from workflows.prompts.models import ModelCall
from workflows.tools import get_action_type


@dataclass
class Settlement:
    # executed | queued | failed | handed_off | revised | revising | not_run
    state: str
    text: str
    at: datetime | None = None
    execute_after: datetime | None = None
    seconds_left: int = 0
    can_undo: bool = False
    owner: str = ""
    revision: Action | None = None


def settlement_of(esc: Escalation, decision: Decision | None, user: AnyUser) -> Settlement | None:
    if decision is None:
        return None
    action = esc.action
    tool = get_action_type(action.action_type)
    now = timezone.now()
    if action.status == ActionStatus.EXECUTED:
        verb = "Sent" if tool.customer_facing else "Done"
        return Settlement(state="executed", text=verb, at=action.executed_at)
    if action.status == ActionStatus.FAILED:
        return Settlement(state="failed", text=f"Failed: {action.error}")
    if action.in_undo_window(now):
        assert action.execute_after is not None
        left = math.ceil((action.execute_after - now).total_seconds())
        return Settlement(
            state="queued",
            text="Queued",
            execute_after=action.execute_after,
            seconds_left=max(left, 0),
            can_undo=decision.decided_by_id == user.pk or bool(user.is_superuser),
        )
    if action.status == ActionStatus.APPROVED:
        return Settlement(state="queued", text="Queued: executing now")
    if decision.verdict == Verdict.RESPOND:
        revision = action.revisions.select_related("escalation").first()
        if revision is not None:
            return Settlement(state="revised", text="The agent revised it", revision=revision)
    fallback = Effect.objects.filter(key__endswith=f":fallback-{action.pk}").first()
    if fallback is not None:
        owner = str((fallback.result or {}).get("assigned_to", ""))
        return Settlement(
            state="handed_off",
            text=f"{tool.fallback_label or 'Handed off'}: {owner} owns it",
            at=fallback.created_at,
            owner=owner,
        )
    if decision.verdict == Verdict.RESPOND:
        return Settlement(state="revising", text="Sent back to the agent, which is revising it")
    if tool.fallback is not None and action.run_id is not None:
        return Settlement(state="revising", text=f"Not run; next: {tool.fallback_label.lower()}")
    return Settlement(state="not_run", text="Not run")


@dataclass(frozen=True)
class FieldChange:
    """One payload field a revision changed, as lines a reviewer reads: a reply's body is
    several paragraphs, and the whole old body struck out beside the whole new one hid the
    one sentence that changed."""

    key: str
    added: list[str]
    removed: list[str]
    # One line replaced by one line (a subject, a team, an amount): read as "old -> new".
    inline: bool = False


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """What changed between two versions of a payload, field by field and, in text, line by
    line: the page an edit's confirmation, its decided state and a revision's note show."""
    out = []
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, str) and isinstance(new, str):
            lines = list(difflib.ndiff(old.splitlines(), new.splitlines()))
            added = [ln[2:] for ln in lines if ln.startswith("+ ") and ln[2:].strip()]
            removed = [ln[2:] for ln in lines if ln.startswith("- ") and ln[2:].strip()]
            inline = "\n" not in old and "\n" not in new
        else:
            added = [] if new is None else [_plain(new)]
            removed = [] if old is None else [_plain(old)]
            inline = old is not None and new is not None
        inline = inline and len(added) == 1 and len(removed) == 1
        out.append(FieldChange(key=key, added=added, removed=removed, inline=inline))
    return out


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _revised_by_model(action: Action) -> str:
    """Which model wrote the revision: its run's last triage.revise call up to then."""
    if action.run_id is None:
        return ""
    call = (
        ModelCall.objects.filter(
            run_id=action.run_id, prompt_name="triage.revise", created_at__lte=action.created_at
        )
        .order_by("-created_at")
        .values_list("model", flat=True)
        .first()
    )
    return call or ""


def revision_context(action: Action) -> dict[str, Any] | None:
    """For a revision's page: the proposal a person answered, their words, what the agent
    changed (line by line), and whether the offline fallback model wrote it."""
    original = action.revision_of
    if original is None:
        return None
    model = _revised_by_model(action)
    return {
        "original": original,
        "original_escalation": getattr(original, "escalation", None),
        "answer": original.feedback.get("text", ""),
        "answered_by": original.feedback.get("by", ""),
        "diff": payload_diff(original.payload, action.payload),
        "changes": field_changes(original.payload, action.payload),
        "model": model,
        "offline": model == OfflineModel.name,
        "offline_label": OfflineModel.label,
    }


def status_label(esc: Escalation, decision: Decision | None) -> tuple[str, str]:
    """(css status, label): an answered escalation is "Answered", never "Rejected"."""
    status = reported_status(esc.status, decision.verdict if decision else None)
    if status == ANSWERED:
        return status, "Answered"
    return esc.status, esc.get_status_display()
