"""What a click or a modal submission in Slack does. Called by the view after the request
was verified; each handler calls the same decide action as the browser.

Slow work (message updates, ephemeral replies) happens after the ack, in Celery; the
decision itself is recorded before the ack, so an acked click is never a lost one.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse

from escalations.access import get_escalation_for
from escalations.actions import AlreadyDecided, TooLateToUndo, decide_escalation, undo_approval
from escalations.models import Verdict, Via
from escalations.rendering import proposal_for_action
from workflows.tools import ToolError, get_action_type

from . import blocks, conf, delivery, transport
from .identity import reviewer_for
from .models import Notification
from .mrkdwn import escape
from .tasks import enqueue_ephemeral

log = logging.getLogger(__name__)

NOT_LINKED = (
    "Your Slack account is not linked to a Caliber reviewer, so nothing was decided. "
    "Ask an admin to link it, or decide in the browser: {url}"
)
# Seconds. Slack waits 3 s for the ack of the click that opens the form, this call included.
VIEWS_OPEN_TIMEOUT = 2
NOT_YOURS = "You are not a reviewer of the team this escalation belongs to; nothing was decided."


def ok() -> HttpResponse:
    return HttpResponse(status=200)


def _escalation_id(raw: object) -> str | None:
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        return None


def _ephemeral(payload: dict[str, Any], escalation_id: str | None, text: str) -> None:
    channel = str((payload.get("channel") or {}).get("id") or "")
    user = str((payload.get("user") or {}).get("id") or "")
    text = escape(text)
    transaction.on_commit(
        lambda: enqueue_ephemeral(
            escalation_id=escalation_id, channel=channel, user=user, text=text
        ),
        robust=True,
    )


def _too_late(exc: AlreadyDecided) -> str:
    return f"Too late: this escalation was {exc}. Nothing changed."


def block_actions(payload: dict[str, Any]) -> HttpResponse:
    actions = payload.get("actions") or []
    if not actions or not isinstance(actions[0], dict):
        return ok()
    action_id = actions[0].get("action_id")
    if action_id not in (blocks.APPROVE, blocks.REJECT, blocks.EDIT, blocks.RESPOND, blocks.UNDO):
        return ok()  # "Open in Caliber" is a link: Slack still tells us, nothing to do
    esc_id = _escalation_id(actions[0].get("value"))
    if esc_id is None:
        return ok()
    slack_user = str((payload.get("user") or {}).get("id") or "")
    user = reviewer_for(slack_user)
    if user is None:
        _ephemeral(payload, None, NOT_LINKED.format(url=conf.review_url(esc_id)))
        return ok()
    if action_id == blocks.UNDO:
        return _undo(payload, esc_id, user)
    if action_id == blocks.APPROVE:
        try:
            decide_escalation(
                escalation_id=esc_id, user=user, verdict=Verdict.APPROVE, via=Via.SLACK
            )
        except Http404:
            _ephemeral(payload, None, NOT_YOURS)
        except AlreadyDecided as exc:
            _ephemeral(payload, esc_id, _too_late(exc))
            # The clicker saw buttons on a decided escalation: make sure the message catches up.
            transport.escalation_changed(exc.escalation)
        except ValidationError as exc:
            _ephemeral(payload, esc_id, " ".join(exc.messages))
        return ok()
    return _open_modal(payload, esc_id, user, str(action_id))


def _undo(payload: dict[str, Any], esc_id: str, user: Any) -> HttpResponse:
    """The browser's Undo: the same action, once (a second click, or a redelivery, finds it
    open again and is told so); after the window it is refused and changes nothing."""
    try:
        undo_approval(escalation_id=esc_id, user=user, via=Via.SLACK)
    except Http404:
        _ephemeral(payload, None, NOT_YOURS)
    except TooLateToUndo as exc:
        _ephemeral(payload, esc_id, f"Not undone: {exc}. Nothing changed.")
        # The message may still show an Undo that no longer applies: bring it up to date.
        transport.escalation_changed(get_escalation_for(user, esc_id))
    else:
        _ephemeral(payload, esc_id, "Undone: nothing was sent. It is back in the queue.")
    return ok()


_MODALS = {
    blocks.REJECT: (blocks.reject_modal, "reject"),
    blocks.EDIT: (blocks.edit_modal, "edit"),
    blocks.RESPOND: (blocks.respond_modal, "respond"),
}


def _open_modal(payload: dict[str, Any], esc_id: str, user: Any, action_id: str) -> HttpResponse:
    build, what = _MODALS[action_id]
    try:
        esc = get_escalation_for(user, esc_id)
    except Http404:
        _ephemeral(payload, None, NOT_YOURS)
        return ok()
    if not esc.is_undecided:
        _ephemeral(payload, esc_id, _too_late(AlreadyDecided(esc)))
        transport.escalation_changed(esc)
        return ok()
    if action_id == blocks.EDIT and not blocks.editable_in_slack(
        proposal_for_action(esc.action), dict(esc.action.payload)
    ):
        _ephemeral(
            payload,
            esc_id,
            f"This one is too long to edit in Slack; edit it in the browser: "
            f"{conf.review_url(esc_id)}",
        )
        return ok()
    trigger_id = str(payload.get("trigger_id") or "")
    channel_id = str((payload.get("channel") or {}).get("id") or "")
    # views.open must happen within 3 s of the click (the trigger_id expires), so it is done
    # here rather than behind a queue that may be busy with agent steps. The same 3 s bound
    # the ack: a slow Slack is given up on in time to still answer (and say so).
    attempt, ms = delivery.call(
        "views.open",
        timeout=VIEWS_OPEN_TIMEOUT,
        trigger_id=trigger_id,
        view=build(esc, channel_id=channel_id),
    )
    Notification.objects.create(
        escalation=esc,
        method="views.open",
        ok=attempt.ok,
        error=attempt.error,
        permanent=not attempt.ok,
        http_status=attempt.http_status,
        duration_ms=ms,
    )
    if not attempt.ok:
        _ephemeral(
            payload,
            esc_id,
            f"Could not open the {what} form ({attempt.error}). Decide in the browser: "
            f"{conf.review_url(esc_id)}",
        )
    return ok()


def view_submission(payload: dict[str, Any]) -> HttpResponse:
    view = payload.get("view") or {}
    callback = view.get("callback_id")
    if callback not in (blocks.REJECT_CALLBACK, blocks.EDIT_CALLBACK, blocks.RESPOND_CALLBACK):
        return ok()
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    esc_id = _escalation_id(meta.get("escalation") if isinstance(meta, dict) else None)
    if esc_id is None:
        return _notice("Not found", "This form no longer points at an escalation.")
    values = (view.get("state") or {}).get("values") or {}
    if not isinstance(values, dict):
        values = {}
    reason = _input(values, blocks.REASON_BLOCK, blocks.REASON_INPUT)
    user = reviewer_for(str((payload.get("user") or {}).get("id") or ""))
    if user is None:
        return _notice("Not linked", NOT_LINKED.format(url=conf.review_url(esc_id)))
    verdict = {
        blocks.REJECT_CALLBACK: Verdict.REJECT,
        blocks.RESPOND_CALLBACK: Verdict.RESPOND,
        blocks.EDIT_CALLBACK: Verdict.APPROVE,
    }[callback]
    edited: dict[str, Any] | None = None
    try:
        if callback == blocks.EDIT_CALLBACK:
            esc = get_escalation_for(user, esc_id)
            edited, errors = _edited_payload(esc.action, values)
            if errors:
                return JsonResponse({"response_action": "errors", "errors": errors})
        decide_escalation(
            escalation_id=esc_id,
            user=user,
            verdict=verdict,
            via=Via.SLACK,
            reason=reason,
            edited_payload=edited,
        )
    except ValidationError as exc:
        # Stays open with the message under the field, as Slack shows its own validation.
        block = blocks.REASON_BLOCK
        if callback == blocks.EDIT_CALLBACK:
            block = _first_field_block(esc_id, user) or blocks.REASON_BLOCK
        return JsonResponse(
            {"response_action": "errors", "errors": {block: " ".join(exc.messages)}}
        )
    except Http404:
        return _notice("Not yours", NOT_YOURS)
    except AlreadyDecided as exc:
        transport.escalation_changed(exc.escalation)
        return _notice("Too late", _too_late(exc))
    return ok()  # an empty 200 closes the modal; the message update follows after commit


def _input(values: dict[str, Any], block: str, action: str) -> str:
    state = values.get(block)
    element = state.get(action) if isinstance(state, dict) else None
    value = element.get("value") if isinstance(element, dict) else None
    return str(value) if value is not None else ""


def _typed(original: Any, raw: str) -> tuple[Any, str | None]:
    """The submitted text as the original value's type (Slack's inputs are all text)."""
    if isinstance(original, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True, None
        if lowered in ("false", "no", "0", ""):
            return False, None
        return original, "Answer yes or no."
    if isinstance(original, int):
        try:
            return int(raw.strip()), None
        except ValueError:
            return original, "A whole number, please."
    if isinstance(original, float):
        try:
            return float(raw.strip()), None
        except ValueError:
            return original, "A number, please."
    if original is None:
        return (raw if raw.strip() else None), None
    return raw, None


def _edited_payload(
    action: Any, values: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The reviewer's version of the payload from the modal's inputs, validated by the
    tool's declaration; None when nothing changed (a plain approval)."""
    proposal = proposal_for_action(action)
    tool = get_action_type(action.action_type)
    payload = dict(action.payload)
    edited = dict(payload)
    errors: dict[str, str] = {}
    for f in proposal.edit_fields:
        block = blocks.field_block_id(f.key)
        if block not in values:
            continue  # not in the submitted view (an older modal): kept as proposed
        raw = _input(values, block, blocks.FIELD_INPUT)
        value, error = _typed(payload.get(f.key), raw)
        if error:
            errors[block] = error
            continue
        if isinstance(value, str) and not value.strip() and f.key in tool.required_fields:
            errors[block] = f"{f.label} cannot be empty."
            continue
        original = payload.get(f.key)
        if (
            isinstance(value, str)
            and isinstance(original, str)
            and value.strip() == original.strip()
        ):
            value = original
        edited[f.key] = value
    if errors:
        return None, errors
    try:
        tool.validate(edited)
    except ToolError as exc:
        first = proposal.edit_fields[0].key if proposal.edit_fields else ""
        return None, {blocks.field_block_id(first) if first else blocks.REASON_BLOCK: str(exc)}
    return (edited if edited != payload else None), {}


def _first_field_block(esc_id: str, user: Any) -> str | None:
    try:
        esc = get_escalation_for(user, esc_id)
    except Http404:
        return None
    fields = proposal_for_action(esc.action).edit_fields
    return blocks.field_block_id(fields[0].key) if fields else None


def _notice(title: str, text: str) -> JsonResponse:
    return JsonResponse(
        {"response_action": "update", "view": blocks.notice_modal(title, escape(text))}
    )
