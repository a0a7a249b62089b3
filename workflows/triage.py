"""The seed's example workflow: support ticket triage.

Read a ticket, classify urgency and category, draft a reply, propose update_crm, send_reply
and route_to_team with a confidence each, act on what policy and people allow, wrap up.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from .actions import propose_action
from .agents import call_for_step
from .engine import StepContext
from .follow_up import schedule_follow_up
from .llm import has_placeholder, promises_refund
from .models import Action, ActionStatus, TraceKind
from .schemas import Classification, Draft, Proposal, Revision
from .settle import run_fallback, settle_actions
from .specs import StepResult, StepSpec, Wait, WorkflowSpec, register
from .tools import ToolError, get_action_type
from .verification import Verification, feedback, model_judge, review_reasons, rule, verified

TRIAGE_ACTION_TYPES = ("update_crm", "send_reply", "route_to_team")
# How many times the agent revises a proposal a person answered before the action type's
# fallback (a person takes the ticket) runs instead.
TRIAGE_MAX_REVISION_ROUNDS = 2

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
    """Settle each action as soon as it is decided, whatever its siblings wait for: execute
    what may run, hand off what a person rejected, revise what a person answered; wait
    again for the rest. The step finishes when every action is settled."""
    executed: list[str] = []
    skipped: list[str] = []
    handed_off: list[dict[str, str]] = []
    revised: list[dict[str, Any]] = []
    feedback: list[dict[str, str]] = []
    # The current proposals: those no revision replaced (through the run's manager: each
    # action's run is this one, not loaded again per action).
    current = ctx.run.actions.filter(step_name="propose_actions", revisions__isnull=True)
    settled = settle_actions(ctx, current)
    # A revision allowed alone runs now; one that needs a person waits like the rest.
    for _ in range(TRIAGE_MAX_REVISION_ROUNDS + 1):
        if not settled.answered:
            break
        answered, settled.answered = settled.answered, []
        new = []
        for action in answered:
            text = str(action.feedback.get("text", ""))
            by = str(action.feedback.get("by", ""))
            feedback.append(
                {"action_type": action.action_type, "verdict": "respond", "reason": text}
            )
            if action.revision_round >= TRIAGE_MAX_REVISION_ROUNDS:
                owner = run_fallback(
                    ctx,
                    action,
                    reason=f"{by} answered {action.revision_round + 1} version(s) without "
                    "approving one",
                )
                if owner is None:
                    skipped.append(action.action_type)
                else:
                    settled.handed_off.append((action, owner))
                continue
            revision = _revise(ctx, action)
            revised.append(
                {
                    "action_type": action.action_type,
                    "round": revision.revision_round,
                    "action": str(revision.pk),
                }
            )
            new.append(revision)
        more = settle_actions(ctx, new)
        settled.executed += more.executed
        settled.failed += more.failed
        settled.skipped += more.skipped
        settled.handed_off += more.handed_off
        settled.pending += more.pending
        settled.answered = more.answered
    for action, owner in settled.handed_off:
        handed_off.append(
            {
                "action_type": action.action_type,
                "owner": owner,
                "reason": str(action.feedback.get("text", "")),
                "by": str(action.feedback.get("by", "")),
            }
        )
    # What earlier rounds of this step settled is in the ledger, not in memory: count it.
    executed = sorted(
        {
            a.action_type
            for a in ctx.run.actions.filter(
                step_name="propose_actions", status=ActionStatus.EXECUTED
            )
        }
        | {a.action_type for a in settled.executed}
    )
    skipped += [a.action_type for a in settled.skipped + settled.failed]
    for action in settled.skipped + [a for a, _ in settled.handed_off]:
        if action.feedback.get("text") and not action.answered:
            feedback.append(
                {
                    "action_type": action.action_type,
                    "verdict": str(action.feedback.get("verdict", "reject")),
                    "reason": str(action.feedback["text"]),
                }
            )
    progress = {
        "executed": executed,
        "skipped": skipped,
        "handed_off": handed_off,
        "revised": revised,
        "feedback": feedback,
    }
    if settled.pending:
        _remember(ctx, progress)
        return Wait(
            f"{len(settled.pending)} action(s) awaiting a human decision or their undo window",
            actions=settled.pending_ids,
            each=True,
        )
    return _merged(ctx, progress)


def _remember(ctx: StepContext, progress: dict[str, Any]) -> None:
    """What this round settled, kept in the run's state for the round that finishes."""
    merged = _merged(ctx, progress)
    ctx.state.update("workspace", lambda ws: {**ws, "act_progress": merged})


def _merged(ctx: StepContext, progress: dict[str, Any]) -> dict[str, Any]:
    before = ctx.state.workspace.get("act_progress") or {}
    out = dict(progress)
    for key in ("skipped", "handed_off", "revised", "feedback"):
        seen = list(before.get(key, []))
        out[key] = seen + [x for x in progress[key] if x not in seen]
    return out


def _revise(ctx: StepContext, action: Action) -> Action:
    """The agent acts on a person's answer: it revises its proposal with the answer in hand,
    and the revision is held against policy like any proposal (it may run alone)."""
    ticket = ctx.run.input
    answer = str(action.feedback.get("text", ""))
    by = str(action.feedback.get("by", "")) or "the reviewer"
    out, _ = call_for_step(
        ctx,
        "triage.revise",
        {
            "action_type": action.action_type,
            "subject": ticket.get("subject", ""),
            "customer": ticket.get("customer", ""),
            "payload": json.dumps(action.payload, ensure_ascii=False),
            "reviewer": by,
            "answer": answer,
        },
        Revision,
        check=lambda r: _check_revision(action.action_type, r),
    )
    revision = propose_action(
        run=ctx.run,
        step_name=action.step_name,
        action_type=action.action_type,
        payload=out.payload,
        confidence=out.confidence,
        rationale=out.rationale,
        force_review_reasons=_revision_reasons(action.action_type, out.payload),
        revision_of=action,
    )
    ctx.trace(
        TraceKind.DECIDED,
        f"revised {action.action_type} after {by} answered “{answer[:200]}” "
        f"(round {revision.revision_round} of {TRIAGE_MAX_REVISION_ROUNDS}): {out.rationale}",
        action=str(revision.pk),
        revision_of=str(action.pk),
    )
    return revision


def _check_revision(action_type: str, revision: Revision) -> list[str]:
    try:
        get_action_type(action_type).validate(revision.payload)
    except ToolError as exc:
        return [str(exc)]
    return []


def _revision_reasons(action_type: str, payload: dict[str, Any]) -> list[str]:
    """A revised reply is checked like the first draft: it never goes out alone unchecked."""
    if action_type != "send_reply":
        return []
    problems = [
        why
        for why in (
            _no_refund_promise({"reply": payload.get("body", "")}),
            _no_placeholder({"reply": payload.get("body", "")}),
        )
        if why
    ]
    return problems


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
        if item.get("verdict") == "respond":
            continue  # acted on already: the agent revised its proposal
        ctx.trace(
            TraceKind.OBSERVED,
            f"reviewer rejected {item['action_type']}: “{item['reason']}”",
        )
    for item in outcome.get("handed_off", []):
        ctx.trace(
            TraceKind.DECIDED,
            f"{item['action_type']} not done by the agent: {item['owner']} owns the ticket now",
        )
    ctx.trace(
        TraceKind.DECIDED,
        f"done: executed {', '.join(outcome.get('executed', [])) or 'nothing'}; "
        f"skipped {', '.join(outcome.get('skipped', [])) or 'nothing'}",
    )
    return {"success": "send_reply" in outcome.get("executed", [])}


def triage_outcome(outputs: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The objective is an answered customer: a reply sent. A reply a person rejected, or
    answered until the rounds ran out, hands the ticket to a named person; otherwise the
    run failed to answer, and says why."""
    act = outputs.get("act", {})
    if "send_reply" in act.get("executed", []):
        return "succeeded", ""
    handed = act.get("handed_off", [])
    if handed:
        item = handed[0]
        why = f" ({item['by']}: {item['reason']})" if item.get("reason") else ""
        return "handed_off", f"{item['action_type']} handed to {item['owner']}{why}"
    skipped = ", ".join(act.get("skipped", [])) or "no reply proposed"
    return "failed", f"no reply was sent to the customer (not done: {skipped})"


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
            # The steps whose bodies call the model (call_for_step): with a model server, each
            # runs alone in the model pool, never inline in a drain's batch
            # (specs.StepSpec.calls_model, settings.MODEL_STEPS_ALONE).
            StepSpec("classify", "Classify urgency and category", classify, calls_model=True),
            # The draft, then the model judge's verdict on it (and a redraft if it fails).
            StepSpec("draft_reply", "Draft a reply", draft_reply, calls_model=True),
            StepSpec(
                "propose_actions",
                "Propose actions, each held against policy",
                propose_actions,
                calls_model=True,
            ),
            # Revises what a person answered (_revise): a model call on any round that has a
            # "respond" to act on, so every round of it runs in the model pool.
            StepSpec("act", "Execute what may run; wait for people", act, calls_model=True),
            StepSpec("wrap_up", "Record the outcome and reviewer feedback", wrap_up),
            StepSpec(
                "schedule_follow_up",
                "Check in 6 hours whether the customer replied",
                schedule_follow_up,
            ),
        ),
        initial_state=initial_state,
        summary_outputs=("classify", "draft_reply"),
        outcome=triage_outcome,
        max_revision_rounds=TRIAGE_MAX_REVISION_ROUNDS,
    )
)
