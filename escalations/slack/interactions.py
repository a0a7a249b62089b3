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
from escalations.actions import AlreadyDecided, decide_escalation
from escalations.models import Verdict, Via

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
    if action_id not in (blocks.APPROVE, blocks.REJECT):
        return ok()  # "Edit in browser" is a link: Slack still tells us, nothing to do
    esc_id = _escalation_id(actions[0].get("value"))
    if esc_id is None:
        return ok()
    slack_user = str((payload.get("user") or {}).get("id") or "")
    user = reviewer_for(slack_user)
    if user is None:
        _ephemeral(payload, None, NOT_LINKED.format(url=conf.review_url(esc_id)))
        return ok()
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
    return _open_reject_modal(payload, esc_id, user)


def _open_reject_modal(payload: dict[str, Any], esc_id: str, user: Any) -> HttpResponse:
    try:
        esc = get_escalation_for(user, esc_id)
    except Http404:
        _ephemeral(payload, None, NOT_YOURS)
        return ok()
    if not esc.is_undecided:
        _ephemeral(payload, esc_id, _too_late(AlreadyDecided(esc)))
        transport.escalation_changed(esc)
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
        view=blocks.reject_modal(esc, channel_id=channel_id),
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
            f"Could not open the reject form ({attempt.error}). Reject in the browser: "
            f"{conf.review_url(esc_id)}",
        )
    return ok()


def view_submission(payload: dict[str, Any]) -> HttpResponse:
    view = payload.get("view") or {}
    if view.get("callback_id") != blocks.REJECT_CALLBACK:
        return ok()
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    esc_id = _escalation_id(meta.get("escalation") if isinstance(meta, dict) else None)
    if esc_id is None:
        return _notice("Not found", "This form no longer points at an escalation.")
    values = (view.get("state") or {}).get("values") or {}
    reason = str(
        ((values.get(blocks.REASON_BLOCK) or {}).get(blocks.REASON_INPUT) or {}).get("value") or ""
    )
    user = reviewer_for(str((payload.get("user") or {}).get("id") or ""))
    if user is None:
        return _notice("Not linked", NOT_LINKED.format(url=conf.review_url(esc_id)))
    try:
        decide_escalation(
            escalation_id=esc_id, user=user, verdict=Verdict.REJECT, via=Via.SLACK, reason=reason
        )
    except ValidationError as exc:
        # Stays open with the message under the field, as Slack shows its own validation.
        return JsonResponse(
            {"response_action": "errors", "errors": {blocks.REASON_BLOCK: " ".join(exc.messages)}}
        )
    except Http404:
        return _notice("Not yours", NOT_YOURS)
    except AlreadyDecided as exc:
        transport.escalation_changed(exc.escalation)
        return _notice("Too late", _too_late(exc))
    return ok()  # an empty 200 closes the modal; the message update follows after commit


def _notice(title: str, text: str) -> JsonResponse:
    return JsonResponse(
        {"response_action": "update", "view": blocks.notice_modal(title, escape(text))}
    )
