"""The seed's example workflow: support ticket triage.

Read a ticket, classify urgency and category, draft a reply, propose update_crm, send_reply
and route_to_team with a confidence each, act on what policy and people allow, wrap up.
"""

from __future__ import annotations

from typing import Any

from .actions import execute_action, propose_action
from .engine import StepContext
from .follow_up import schedule_follow_up
from .models import Action, ActionStatus, TraceKind
from .specs import StepResult, StepSpec, Wait, WorkflowSpec, register

CATEGORY_TEAMS = {
    "billing": "Billing",
    "bug": "Engineering",
    "account": "Support",
    "shipping": "Logistics",
    "other": "Support",
}


def read_ticket(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    for field in ("ticket_id", "subject", "body", "customer"):
        if not str(ticket.get(field, "")).strip():
            raise ValueError(f"ticket has no {field}")
    ctx.trace(
        TraceKind.OBSERVED,
        f"read ticket {ticket['ticket_id']} from {ticket['customer']}: “{ticket['subject']}”",
        body=str(ticket["body"])[:2000],
    )
    return {k: ticket[k] for k in ("ticket_id", "subject", "customer")}


def classify(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    result = ctx.model.classify_ticket(subject=ticket["subject"], body=ticket["body"])
    ctx.trace(
        TraceKind.DECIDED,
        f"classified as {result.data['category']}, urgency {result.data['urgency']} "
        f"(confidence {result.data['confidence']:.2f})",
        model=result.model,
        notes=result.notes,
        tokens={"input": result.input_tokens, "output": result.output_tokens},
    )
    return dict(result.data)


def draft_reply(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    category = ctx.output_of("classify")["category"]
    result = ctx.model.draft_reply(
        subject=ticket["subject"],
        body=ticket["body"],
        customer=ticket["customer"],
        category=category,
    )
    ctx.trace(
        TraceKind.DECIDED,
        f"drafted a reply (confidence {result.data['confidence']:.2f})",
        model=result.model,
        reply=result.data["reply"],
    )
    return dict(result.data)


def propose_actions(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    cls = ctx.output_of("classify")
    draft = ctx.output_of("draft_reply")
    team = CATEGORY_TEAMS.get(cls["category"], "Support")
    proposals: list[tuple[str, dict[str, Any], float, str]] = [
        (
            "update_crm",
            {
                "ticket_id": ticket["ticket_id"],
                "category": cls["category"],
                "urgency": cls["urgency"],
            },
            cls["confidence"],
            "record the classification on the ticket",
        ),
        (
            "send_reply",
            {"ticket_id": ticket["ticket_id"], "to": ticket["customer"], "body": draft["reply"]},
            draft["confidence"],
            "answer the customer with the drafted reply",
        ),
        (
            "route_to_team",
            {"ticket_id": ticket["ticket_id"], "team": team},
            round(max(cls["confidence"] - 0.05, 0.0), 2),
            f"{cls['category']} tickets are handled by {team}",
        ),
    ]
    ids = []
    for action_type, payload, confidence, rationale in proposals:
        action = propose_action(
            run=ctx.run,
            step_name=ctx.step.name,
            action_type=action_type,
            payload=payload,
            confidence=confidence,
            rationale=rationale,
        )
        ids.append(str(action.pk))
    return {"actions": ids}


def act(ctx: StepContext) -> StepResult:
    """Execute what may run; wait while anything is still with a person."""
    executed, skipped, feedback = [], [], []
    waiting = 0
    waiting_on = []
    proposed = Action.objects.filter(run=ctx.run, step_name="propose_actions")
    for action in proposed.order_by("created_at"):
        if action.status in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
            action = execute_action(action=action)
        if action.status == ActionStatus.EXECUTED:
            executed.append(action.action_type)
        elif action.status == ActionStatus.ESCALATED:
            waiting += 1
            waiting_on.append(str(action.pk))
        elif action.status in (ActionStatus.REJECTED, ActionStatus.BLOCKED, ActionStatus.FAILED):
            skipped.append(action.action_type)
            decision = getattr(getattr(action, "escalation", None), "decision", None)
            if decision is not None and decision.reason:
                feedback.append(
                    {
                        "action_type": action.action_type,
                        "verdict": decision.verdict,
                        "reason": decision.reason,
                    }
                )
    if waiting:
        return Wait(f"{waiting} action(s) awaiting a human decision", actions=tuple(waiting_on))
    return {"executed": executed, "skipped": skipped, "feedback": feedback}


def initial_state(ticket: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The conversation starts with the customer's message; the systems it may touch."""
    return {
        "conversation": {
            "intent": "resolve the customer's ticket",
            "messages": [{"role": "customer", "content": str(ticket.get("body", ""))[:4000]}],
        },
        "workspace": {"outputs": {}},
        "systemic": {"connected_systems": ["crm", "mail", "ticket_router"]},
    }


def wrap_up(ctx: StepContext) -> StepResult:
    outcome = ctx.output_of("act")
    for item in outcome.get("feedback", []):
        ctx.trace(
            TraceKind.OBSERVED,
            f"reviewer {'answered' if item.get('verdict') == 'respond' else 'rejected'} "
            f"{item['action_type']}: “{item['reason']}” — noted for next time",
        )
    ctx.trace(
        TraceKind.DECIDED,
        f"done: executed {', '.join(outcome.get('executed', [])) or 'nothing'}; "
        f"skipped {', '.join(outcome.get('skipped', [])) or 'nothing'}",
    )
    return {"success": bool(outcome.get("executed"))}


TRIAGE = register(
    WorkflowSpec(
        name="support_triage",
        version=1,
        title="Support ticket triage",
        agent="triage-agent",
        steps=(
            StepSpec("read_ticket", "Read the ticket", read_ticket),
            StepSpec("classify", "Classify urgency and category", classify),
            StepSpec("draft_reply", "Draft a reply", draft_reply),
            StepSpec(
                "propose_actions", "Propose actions, each held against policy", propose_actions
            ),
            StepSpec("act", "Execute what may run; wait for people", act),
            StepSpec("wrap_up", "Record the outcome and reviewer feedback", wrap_up),
            StepSpec(
                "schedule_follow_up",
                "Check in 6 hours whether the customer replied",
                schedule_follow_up,
            ),
        ),
        initial_state=initial_state,
    )
)
