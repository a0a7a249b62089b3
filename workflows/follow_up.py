"""The triage follow-up: "check in 6 hours whether the customer replied".

Triage ends by scheduling a follow-up run (its own run, so the ticket's run finishes — and
counts as complete — now, not in six hours). The follow-up's one step waits for the
customer's reply (an outside event delivered to the ticket run, workflows.run_events) or the
end of the window, whichever comes first: the window's end is a database column scanned by
beat, never a broker countdown. It then records what it found as an outcome of the reply it
sent: no reply within the window is taken as resolved (good); a reply means the customer
still needed help (bad).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from pydantic import BaseModel, ConfigDict

from .actions import record_outcome, start_run
from .engine import StepContext
from .models import Action, ActionStatus, OutcomeQuality, OutcomeSource, TraceKind, WorkflowRun
from .run_events import CUSTOMER_REPLIED
from .specs import StepResult, StepSpec, Wait, WorkflowSpec, register

FOLLOW_UP_SECONDS = 6 * 3600
METRIC = "customer_replied_within_6h"


def schedule_follow_up(ctx: StepContext) -> StepResult:
    """A triage step: start the follow-up run if a reply actually went out."""
    reply = (
        Action.objects.filter(run=ctx.run, action_type="send_reply", status=ActionStatus.EXECUTED)
        .order_by("-executed_at")
        .first()
    )
    if reply is None or reply.executed_at is None:
        ctx.trace(TraceKind.DECIDED, "no reply was sent, so there is nothing to follow up")
        return {"follow_up_run": None}
    child = start_run(
        workflow=FOLLOW_UP.name,
        input={
            "subject": f"Follow-up: {ctx.run.title}",
            "ticket_run": str(ctx.run.pk),
            "reply_action": str(reply.pk),
            "reply_sent_at": reply.executed_at.isoformat(),
            "check_after_seconds": FOLLOW_UP_SECONDS,
        },
        parent=ctx.run,
        idempotency_key=f"follow-up:{ctx.run.pk}",
    )
    ctx.trace(
        TraceKind.DECIDED,
        f"will check in {FOLLOW_UP_SECONDS // 3600} hours whether the customer replied",
        follow_up_run=str(child.pk),
    )
    return {"follow_up_run": str(child.pk)}


def _customer_replies(ticket_run: WorkflowRun, since: datetime) -> list[dict[str, Any]]:
    messages = (ticket_run.state.get("conversation") or {}).get("messages", [])
    replies = []
    for m in messages:
        at = parse_datetime(str(m.get("at", "")))
        if m.get("role") == "customer" and at is not None and at > since:
            replies.append(m)
    return replies


def await_reply(ctx: StepContext) -> StepResult:
    """Wait for the customer's reply to the ticket (an outside event delivered to the ticket
    run: POST /api/v1/runs/{id}/events) or the end of the window, whichever comes first."""
    data = ctx.run.input
    since = parse_datetime(str(data.get("reply_sent_at", "")))
    if since is None:
        raise ValueError("reply_sent_at is not a timestamp")
    deadline = since + timedelta(seconds=float(data.get("check_after_seconds", FOLLOW_UP_SECONDS)))
    ticket_run = WorkflowRun.objects.get(pk=data["ticket_run"])
    replies = _customer_replies(ticket_run, since)
    replied = bool(replies)
    if not replied and not ctx.woken and timezone.now() < deadline:
        return Wait(
            "the customer's reply, or the end of the follow-up window",
            events=(CUSTOMER_REPLIED,),
            until=deadline,
        )
    reply = Action.objects.get(pk=data["reply_action"])
    record_outcome(
        metric=METRIC,
        quality=OutcomeQuality.BAD if replied else OutcomeQuality.GOOD,
        source=OutcomeSource.FOLLOW_UP,
        action=reply,
        value=1.0 if replied else 0.0,
        note=(
            f"the customer wrote back {len(replies)} time(s): still needed help"
            if replied
            else "no reply from the customer: taken as resolved"
        ),
        data={"follow_up_run": str(ctx.run.pk)},
        recorded_by="follow-up",
    )
    return {"replied": replied, "messages": len(replies)}


class FollowUpInput(BaseModel):
    """Written by the triage run that sent the reply (schedule_follow_up)."""

    model_config = ConfigDict(extra="allow")

    subject: str
    ticket_run: str
    reply_action: str
    reply_sent_at: datetime
    check_after_seconds: int


FOLLOW_UP = register(
    WorkflowSpec(
        name="support_follow_up",
        version=1,
        title="Support ticket follow-up",
        agent="triage-agent",
        input_schema=FollowUpInput,
        steps=(
            StepSpec(
                "await_reply",
                "Wake after 6 hours; record whether the customer replied",
                await_reply,
            ),
        ),
    )
)
