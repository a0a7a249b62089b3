"""The seed's example workflow: support ticket triage.

Read a ticket, classify urgency and category, draft a reply, propose update_crm, send_reply
and route_to_team with a confidence each, act on what policy and people allow, wrap up.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from .actions import execute_action, propose_action
from .agents import call_for_step
from .engine import StepContext
from .follow_up import schedule_follow_up
from .llm import has_placeholder, promises_refund
from .models import ActionStatus, TraceKind
from .schemas import Classification, Draft, Proposal
from .specs import StepResult, StepSpec, Wait, WorkflowSpec, register
from .tools import ToolError, get_action_type
from .verification import Verification, feedback, model_judge, review_reasons, rule, verified

TRIAGE_ACTION_TYPES = ("update_crm", "send_reply", "route_to_team")

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
    out, _ = call_for_step(
        ctx,
        "triage.classify",
        {"subject": ticket["subject"], "body": ticket["body"]},
        Classification,
    )
    ctx.trace(
        TraceKind.DECIDED,
        f"classified as {out.category}, urgency {out.urgency} (confidence {out.confidence:.2f})"
        + (f"; unsure: {out.uncertain_about}" if out.uncertain_about else ""),
    )
    return out.model_dump()


def _draft(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    problems = feedback()
    out, _ = call_for_step(
        ctx,
        "triage.draft_reply",
        {
            "subject": ticket["subject"],
            "body": ticket["body"],
            "customer": ticket["customer"],
            "category": ctx.output_of("classify")["category"],
            "feedback": (
                "A reviewer of your previous draft found these problems; fix them: "
                + "; ".join(problems)
            )
            if problems
            else "",
        },
        Draft,
    )
    ctx.trace(
        TraceKind.DECIDED, f"drafted a reply (confidence {out.confidence:.2f})", reply=out.reply
    )
    return out.model_dump()


def _no_refund_promise(output: dict[str, Any]) -> str | None:
    if promises_refund(str(output.get("reply", ""))):
        return "the reply promises a refund, which support policy forbids"
    return None


def _no_placeholder(output: dict[str, Any]) -> str | None:
    if has_placeholder(str(output.get("reply", ""))):
        return "the reply contains placeholder text"
    return None


draft_reply = verified(
    _draft,
    Verification(
        checks=(
            rule("no refund promise", _no_refund_promise),
            rule("no placeholders", _no_placeholder),
            model_judge(
                "triage.judge_reply",
                lambda ctx, out: {"subject": ctx.run.input["subject"], "reply": out["reply"]},
            ),
        ),
        on_fail="retry",
        max_retries=1,
    ),
)

MAX_PROPOSED_ACTIONS = 5


def _check_proposal(proposal: Proposal) -> list[str]:
    """Only declared action types, each once, with the fields their tools need."""
    problems = []
    if len(proposal.actions) > MAX_PROPOSED_ACTIONS:
        problems.append(f"{len(proposal.actions)} actions proposed; at most {MAX_PROPOSED_ACTIONS}")
    seen = set()
    for item in proposal.actions:
        if item.action_type not in TRIAGE_ACTION_TYPES:
            problems.append(
                f"unknown action type {item.action_type!r}; allowed: "
                + ", ".join(TRIAGE_ACTION_TYPES)
            )
            continue
        if item.action_type in seen:
            problems.append(f"{item.action_type} proposed twice")
        seen.add(item.action_type)
        try:
            get_action_type(item.action_type).validate(item.payload)
        except ToolError as exc:
            problems.append(str(exc))
    return problems


def propose_actions(ctx: StepContext) -> StepResult:
    ticket = ctx.run.input
    cls = ctx.output_of("classify")
    draft = ctx.output_of("draft_reply")
    described = "\n".join(
        f"- {name}: payload fields {', '.join(get_action_type(name).required_fields)}"
        for name in TRIAGE_ACTION_TYPES
    )
    proposal, _ = call_for_step(
        ctx,
        "triage.propose",
        {
            "ticket_id": ticket["ticket_id"],
            "customer": ticket["customer"],
            "category": cls["category"],
            "urgency": cls["urgency"],
            "classification_confidence": cls["confidence"],
            "reply": draft["reply"],
            "draft_confidence": draft["confidence"],
            "team": CATEGORY_TEAMS.get(cls["category"], "Support"),
            "action_types": described,
        },
        Proposal,
        check=_check_proposal,
    )
    draft_problems = review_reasons(draft)
    ids = []
    for item in proposal.actions:
        action = propose_action(
            run=ctx.run,
            step_name=ctx.step.name,
            action_type=item.action_type,
            payload=item.payload,
            confidence=item.confidence,
            rationale=item.rationale,
            force_review_reasons=draft_problems if item.action_type == "send_reply" else [],
        )
        ids.append(str(action.pk))
    return {"actions": ids}


def act(ctx: StepContext) -> StepResult:
    """Execute what may run; wait while anything is still with a person."""
    executed, skipped, feedback = [], [], []
    waiting = 0
    waiting_on = []
    # Through the run's manager: each action's run is this one, not loaded again per action.
    proposed = ctx.run.actions.filter(step_name="propose_actions")
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


_Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class Ticket(BaseModel):
    """A support ticket, as `POST /api/v1/runs` and `manage.py start_run` must give it."""

    model_config = ConfigDict(extra="allow")

    ticket_id: _Line
    subject: _Line
    body: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]
    customer: _Line


TRIAGE = register(
    WorkflowSpec(
        name="support_triage",
        version=1,
        title="Support ticket triage",
        agent="triage-agent",
        input_schema=Ticket,
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
        summary_outputs=("classify", "draft_reply"),
    )
)
