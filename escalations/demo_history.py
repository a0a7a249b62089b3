"""Thirty days of demo history, so /metrics/, calibration and the recommender say something
the moment the demo starts.

Support-triage runs, their actions (each held against today's demo policies by the real
`evaluate`, so outcomes, reasons and policy versions are what the live path would record),
the escalations people decided, what happened afterwards (outcomes) and the model calls'
cost. The confidence of an action predicts how often a person approves it unchanged (a
slightly overconfident model: near the diagonal at the top, below it lower down), and from
DEGRADED_FROM to DEGRADED_TO days ago a bad prompt made replies worse while the model's
confidence stayed put: the override rate, failed runs and bad outcomes of those days show it.

Everything is written with bulk inserts in dependency order (runs, actions, escalations,
decisions, outcomes, model calls): the metrics rollups' row triggers count each insert, so
the rollups stay exact with no special path (review/metrics/rollups.py). Deterministic (one
seeded generator) and written once: every row's idempotency key starts with HISTORY_KEY,
and a second run finds them and adds nothing.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from workflows.llm import revise_payload
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    Outcome,
    OutcomeQuality,
    OutcomeSource,
    PolicyOutcome,
    RunStatus,
    WorkflowRun,
)
from workflows.prompts.models import ModelCall
from workflows.tools import ACTION_TYPES

from .models import (
    AgentProfile,
    Decision,
    Escalation,
    EscalationStatus,
    Team,
    Verdict,
    Via,
)
from .policy import compile_policy_set, evaluate

HISTORY_KEY = "demo-history:"
DAYS = 30
RUNS_PER_DAY = (28, 44)
DEGRADED_FROM, DEGRADED_TO = 16, 12  # days ago: the bad prompt's window

# (category, subject, body, routine): routine tickets have a known answer the agent gives
# confidently and nearly always right; the rest it is less sure of, and less often right.
_TICKETS = (
    ("billing", "Charged twice for my subscription", "I was charged twice this month.", False),
    ("billing", "Refund for order {n}", "The item arrived broken, I'd like my money back.", False),
    ("billing", "Invoice shows the wrong VAT number", "Please correct the VAT number.", False),
    ("account", "Can't log in after the password reset", "The reset link says it expired.", True),
    ("account", "Please delete my account", "I no longer use the service.", True),
    ("bug", "Export to CSV is empty", "The export has headers and no rows since Monday.", False),
    ("bug", "App crashes when I open settings", "Every time, on Android 14.", False),
    ("shipping", "Where is order {n}?", "Tracking hasn't moved for five days.", True),
    ("shipping", "Wrong size delivered", "I ordered an M and got an XL.", True),
    ("question", "Do you offer a student discount?", "I'm at university and on a budget.", True),
)
_TEAMS = {"billing": "Billing", "account": "Support", "bug": "Support", "shipping": "Support"}
_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Frances", "Donald", "Radia")
_REJECT_REASONS = (
    "Too casual: apologise and confirm the date.",
    "Wrong order number.",
    "Promises a refund we have not agreed.",
    "Doesn't answer the question asked.",
)
# What reviewers answer instead of deciding (Respond): things the agent can act on, which
# it does as the live engine's offline model would (workflows.llm.revise_payload).
_RESPOND = {
    "send_reply": (
        "Ask them for their order number first.",
        "Apologise for the delay.",
        "Tell them the team will call back tomorrow morning.",
    ),
    "route_to_team": ("This is a Billing question: send it there.",),
    "update_crm": ("Note that the customer has written twice about this.",),
}
# How often a person approves the revision of their own answer (else they reject it, and
# the ticket is handed to them).
REVISION_APPROVED = 0.85


ROUTINE_ERROR = 0.001


def approval_probability(
    confidence: float, *, routine: bool = False, degraded: bool = False, internal: bool = False
) -> float:
    """How often a person approves an action unchanged: a routine ticket's answer nearly
    always; otherwise less often than the confidence says (the model is overconfident in the
    middle), and much less with the bad prompt, with no change in the model's confidence.
    Its internal actions (classifying, routing) it gets right more often than it says."""
    if routine:
        return 1 - ROUTINE_ERROR
    if internal:
        return 1 - (1 - confidence) ** 2
    p = confidence ** (1 + 2 * (1 - confidence))
    return p * 0.4 if degraded else p


@dataclass
class _Plan:
    runs: list[WorkflowRun]
    actions: list[Action]
    escalations: list[Escalation]
    decisions: list[Decision]
    outcomes: list[Outcome]
    calls: list[ModelCall]
    effects: list[Effect]
    # The revisions' own generator: adding them left every other draw (and so the
    # calibration curve and the recommender's answer) as it was.
    revision_rng: random.Random


def history_exists() -> bool:
    return WorkflowRun.objects.filter(idempotency_key__startswith=HISTORY_KEY).exists()


def seed_history(*, now: datetime | None = None, seed: int = 17) -> int:
    """Write the demo history unless it is there; returns how many runs were added."""
    with transaction.atomic():
        if history_exists():
            return 0
        plan = _plan(now or timezone.now(), random.Random(seed), random.Random(seed + 1))
        WorkflowRun.objects.bulk_create(plan.runs, batch_size=500)
        Action.objects.bulk_create(plan.actions, batch_size=500)
        Escalation.objects.bulk_create(plan.escalations, batch_size=500)
        Decision.objects.bulk_create(plan.decisions, batch_size=500)
        Outcome.objects.bulk_create(plan.outcomes, batch_size=500)
        Effect.objects.bulk_create(plan.effects, batch_size=500)
        ModelCall.objects.bulk_create(plan.calls, batch_size=500)
    return len(plan.runs)


def _plan(now: datetime, rng: random.Random, revision_rng: random.Random) -> _Plan:
    agent = AgentProfile.objects.get(name="triage-agent")
    teams = {t.name: t for t in Team.objects.all()}
    reviewers = {
        "Support": User.objects.filter(teams__name="Support").order_by("pk").first(),
        "Billing": User.objects.filter(teams__name="Billing").order_by("pk").first(),
    }
    fallback = User.objects.filter(is_superuser=True).order_by("pk").first()
    policy_set = compile_policy_set()
    plan = _Plan([], [], [], [], [], [], [], revision_rng)
    serial = 0
    for days_ago in range(DAYS, 0, -1):
        degraded = DEGRADED_TO <= days_ago <= DEGRADED_FROM
        day = now - timedelta(days=days_ago)
        for _ in range(rng.randint(*RUNS_PER_DAY)):
            serial += 1
            created = day.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(
                minutes=rng.randint(0, 10 * 60)
            )
            category, subject, body, routine = rng.choice(_TICKETS)
            # The bad prompt broke the routine answers' template too: drafted like the rest.
            routine = routine and not degraded
            subject = subject.format(n=1000 + serial)
            name = rng.choice(_NAMES)
            ticket = {
                "ticket_id": f"H-{serial:05d}",
                "subject": subject,
                "body": body,
                "customer": f"{name.lower()}.{serial}@example.com",
            }
            failed = rng.random() < (0.12 if degraded else 0.025)
            run = WorkflowRun(
                id=uuid.UUID(int=rng.getrandbits(128), version=4),
                workflow="support_triage",
                workflow_version=1,
                agent=agent,
                status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
                input=ticket,
                error=(
                    "model error: the reply draft did not parse as the declared schema"
                    if failed
                    else ""
                ),
                model_label="offline deterministic model (demo history)",
                idempotency_key=f"{HISTORY_KEY}{serial}",
                durable=True,
                created_at=created,
                updated_at=created + timedelta(minutes=30),
                finished_at=created + timedelta(minutes=rng.randint(1, 90)),
            )
            plan.runs.append(run)
            plan.calls.append(
                ModelCall(
                    run=run,
                    step_name="draft_reply",
                    prompt_name="triage.reply",
                    prompt_version=2 if degraded else 1,
                    model="offline",
                    ok=not failed,
                    error=run.error,
                    input_tokens=rng.randint(600, 1400),
                    output_tokens=rng.randint(120, 400),
                    cost_usd=Decimal(rng.randint(900, 2600)) / Decimal(1_000_000),
                    latency_ms=rng.uniform(300, 2500),
                    created_at=created,
                )
            )
            if failed:
                continue
            for action_type, payload, confidence in _proposals(rng, ticket, category, routine):
                _add_action(
                    plan,
                    rng,
                    policy_set,
                    run=run,
                    agent=agent,
                    action_type=action_type,
                    payload=payload,
                    confidence=confidence,
                    created=created + timedelta(seconds=rng.randint(5, 60)),
                    degraded=degraded,
                    routine=routine and action_type == "send_reply",
                    teams=teams,
                    reviewers=reviewers,
                    fallback=fallback,
                )
    return plan


def _proposals(
    rng: random.Random, ticket: dict[str, str], category: str, routine: bool
) -> list[tuple[str, dict[str, Any], float]]:
    tid = ticket["ticket_id"]
    name = ticket["customer"].split(".")[0].title()
    out: list[tuple[str, dict[str, Any], float]] = [
        ("update_crm", {"ticket_id": tid, "category": category}, rng.betavariate(8, 2)),
        (
            "send_reply",
            {
                "ticket_id": tid,
                "to": ticket["customer"],
                "subject": f"Re: {ticket['subject']}",
                "body": f"Hi {name},\n\nThanks for writing in about this. We're on it and "
                "will follow up within a day.\n\nBest,\nSupport",
            },
            rng.uniform(0.95, 0.995) if routine else rng.betavariate(5, 2),
        ),
    ]
    if category in _TEAMS and rng.random() < 0.5:
        out.append(
            (
                "route_to_team",
                {"ticket_id": tid, "team": _TEAMS[category], "reason": f"{category} ticket"},
                rng.betavariate(5, 1.8),
            )
        )
    return out


def _add_action(
    plan: _Plan,
    rng: random.Random,
    policy_set: Any,
    *,
    run: WorkflowRun,
    agent: AgentProfile,
    action_type: str,
    payload: dict[str, Any],
    confidence: float,
    created: datetime,
    degraded: bool,
    routine: bool,
    teams: dict[str, Team],
    reviewers: dict[str, User | None],
    fallback: User | None,
) -> None:
    confidence = round(min(max(confidence, 0.3), 0.995), 3)
    decision = evaluate(
        agent=agent,
        workflow=run.workflow,
        action_type=action_type,
        confidence=confidence,
        payload=payload,
        now=created,
        policy_set=policy_set,
        count_recent=lambda *args: 0,
        apply_kill_switch=False,
    )
    action = Action(
        id=uuid.UUID(int=rng.getrandbits(128), version=4),
        run=run,
        step_name="propose_actions",
        agent=agent,
        action_type=action_type,
        payload=payload,
        confidence=confidence,
        rationale="demo history",
        outcome=decision.outcome,
        reasons=decision.reasons,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        idempotency_key=f"{run.idempotency_key}:{action_type}",
        created_at=created,
    )
    plan.actions.append(action)
    if decision.outcome == PolicyOutcome.AUTO:
        action.status = ActionStatus.EXECUTED
        action.executed_at = created + timedelta(seconds=1)
        action.result = {"demo": True}
        good = rng.random() < approval_probability(
            confidence, routine=routine, internal=action_type != "send_reply"
        )
        _maybe_outcome(plan, rng, action, good=good)
        return
    if decision.outcome == PolicyOutcome.BLOCK:
        action.status = ActionStatus.BLOCKED
        return
    team = next((t for t in teams.values() if t.pk == decision.team_id), None)
    if team is None:
        action.status = ActionStatus.BLOCKED
        return
    reviewer = reviewers.get(team.name) or fallback
    if reviewer is None:
        action.status = ActionStatus.BLOCKED
        return
    # Most within the SLA; a long tail, so the SLA figures have breaches to show.
    wait = timedelta(minutes=min(rng.expovariate(1 / 12), 240))
    escalation_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    p_ok = approval_probability(
        confidence,
        routine=routine,
        degraded=degraded and action_type == "send_reply",
        internal=action_type != "send_reply",
    )
    roll = rng.random()
    edited: dict[str, Any] | None = None
    reason = ""
    if roll < p_ok:
        verdict = Verdict.APPROVE
    elif roll < p_ok + (1 - p_ok) * 0.45:
        verdict = Verdict.APPROVE
        edited = {**payload}
        if "body" in edited:
            edited["body"] = str(edited["body"]).replace("within a day", "today")
        else:
            edited["category"] = "billing"
        reason = "Fixed the details before it went out."
    elif roll < p_ok + (1 - p_ok) * 0.9:
        verdict = Verdict.REJECT
        reason = rng.choice(_REJECT_REASONS)
    else:
        verdict = Verdict.RESPOND
        reason = rng.choice(_RESPOND.get(action_type, _RESPOND["update_crm"]))
    decided_at = _escalate_and_decide(
        plan,
        rng,
        action,
        escalation_id=escalation_id,
        team=team,
        reviewer=reviewer,
        created=created,
        wait=wait,
        verdict=verdict,
        reason=reason,
        edited=edited,
        degraded=degraded,
    )
    if verdict == Verdict.RESPOND:
        _revise(
            plan,
            plan.revision_rng,
            policy_set,
            action,
            answered_at=decided_at,
            degraded=degraded,
            teams=teams,
            reviewer=reviewer,
        )


def _escalate_and_decide(
    plan: _Plan,
    rng: random.Random,
    action: Action,
    *,
    escalation_id: uuid.UUID,
    team: Team,
    reviewer: User,
    created: datetime,
    wait: timedelta,
    verdict: Verdict,
    reason: str,
    edited: dict[str, Any] | None,
    degraded: bool,
) -> datetime:
    """The escalation, the person's decision and what the live engine makes of it (sent,
    handed off, or answered: back to the agent). Returns when it was decided."""
    assert action.run is not None
    run = action.run
    action_type = action.action_type
    sla = 30 if action_type == "send_reply" else None
    decided_at = created + wait
    revision = f" (revision {action.revision_round})" if action.revision_round else ""
    escalation = Escalation(
        id=escalation_id,
        action=action,
        team=team,
        reasons=action.reasons,
        summary=f"{action_type} for {run.input['ticket_id']}: {run.input['subject']}{revision}",
        created_at=created,
        sla_minutes=sla,
        sla_due_at=created + timedelta(minutes=sla) if sla else None,
        decided_at=decided_at,
    )
    approved = verdict == Verdict.APPROVE
    escalation.status = EscalationStatus.APPROVED if approved else EscalationStatus.REJECTED
    action.status = ActionStatus.EXECUTED if approved else ActionStatus.REJECTED
    if approved:
        action.approved_payload = edited or action.payload
        action.executed_at = decided_at + timedelta(seconds=1)
        action.result = {"demo": True}
    plan.escalations.append(escalation)
    plan.decisions.append(
        Decision(
            escalation=escalation,
            verdict=verdict,
            decided_by=reviewer,
            via=Via.SLACK if rng.random() < 0.2 else Via.WEB,
            reason=reason,
            edited_payload=edited,
            created_at=decided_at,
        )
    )
    if approved:
        good = rng.random() < (0.55 if degraded and action_type == "send_reply" else 0.92)
        _maybe_outcome(plan, rng, action, good=good)
    elif verdict == Verdict.REJECT:
        _hand_off(plan, action, by=reviewer.get_username(), reason=reason, at=decided_at)
    else:
        # What the engine reads (workflows.settle.record_decision): the words go back to
        # the agent, which revises its proposal.
        by = reviewer.get_username()
        action.feedback = {"verdict": verdict.value, "text": reason, "by": by, "owner": by}
    return decided_at


def _revise(
    plan: _Plan,
    rng: random.Random,
    policy_set: Any,
    answered: Action,
    *,
    answered_at: datetime,
    degraded: bool,
    teams: dict[str, Team],
    reviewer: User,
) -> None:
    """What the live engine does with an answer (workflows.triage.act): the agent revises
    its proposal with the reviewer's words (as the offline model's rules do), the revision
    is held against today's policies like any proposal, and a person decides it — mostly
    approved and sent, else rejected and handed to them. The run ends by the revision."""
    assert answered.run is not None
    run = answered.run
    text = str(answered.feedback.get("text", ""))
    payload, changed = revise_payload(answered.action_type, dict(answered.payload), text)
    confidence = 0.85 if changed else 0.5
    created = answered_at + timedelta(seconds=rng.randint(2, 20))
    decision = evaluate(
        agent=answered.agent,
        workflow=run.workflow,
        action_type=answered.action_type,
        confidence=confidence,
        payload=payload,
        now=created,
        policy_set=policy_set,
        count_recent=lambda *args: 0,
        apply_kill_switch=False,
    )
    revision = Action(
        id=uuid.UUID(int=rng.getrandbits(128), version=4),
        run=run,
        step_name=answered.step_name,
        agent=answered.agent,
        action_type=answered.action_type,
        payload=payload,
        confidence=confidence,
        rationale=f"revised as {reviewer.get_username()} asked: {changed}"
        if changed
        else "could not tell what to change; sent back as it was",
        outcome=decision.outcome,
        reasons=decision.reasons,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        idempotency_key=f"{answered.idempotency_key}:r1",
        created_at=created,
        revision_of=answered,
        revision_round=1,
    )
    plan.actions.append(revision)
    team = next((t for t in teams.values() if t.pk == decision.team_id), None)
    if decision.outcome == PolicyOutcome.AUTO or team is None:
        # Allowed alone (or nowhere to send it): it runs, as the live engine runs it.
        revision.status = ActionStatus.EXECUTED
        revision.executed_at = created + timedelta(seconds=1)
        revision.result = {"demo": True}
        return
    approved = rng.random() < REVISION_APPROVED
    _escalate_and_decide(
        plan,
        rng,
        revision,
        escalation_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        team=team,
        reviewer=reviewer,
        created=created,
        wait=timedelta(minutes=min(rng.expovariate(1 / 6), 120)),
        verdict=Verdict.APPROVE if approved else Verdict.REJECT,
        reason="" if approved else "Still not right; I'll write to them myself.",
        edited=None,
        degraded=degraded,
    )


def _hand_off(plan: _Plan, action: Action, *, by: str, reason: str, at: datetime) -> None:
    """What the live engine does with a rejected action whose type declares a fallback
    (workflows.settle.run_fallback): the person who rejected it owns the work, recorded in
    the effect ledger; a rejected customer reply hands its run to them (triage_outcome)."""
    tool = ACTION_TYPES.get(action.action_type)
    if tool is None or tool.fallback is None or action.run is None:
        return
    run = action.run
    action.feedback = {"verdict": Verdict.REJECT.value, "text": reason, "by": by, "owner": by}
    plan.effects.append(
        Effect(
            key=f"{run.pk}:act:fallback-{action.pk}",
            run=run,
            step_name="act",
            result=tool.fallback(dict(action.payload), by),
            created_at=at + timedelta(seconds=1),
        )
    )
    if action.action_type == "send_reply" and run.status == RunStatus.SUCCEEDED:
        run.status = RunStatus.HANDED_OFF
        run.error = f"{action.action_type} handed to {by} ({by}: {reason})"
        run.finished_at = max(run.finished_at or at, at + timedelta(seconds=1))


def _maybe_outcome(plan: _Plan, rng: random.Random, action: Action, *, good: bool) -> None:
    if rng.random() < 0.4:
        return
    assert action.executed_at is not None
    plan.outcomes.append(
        Outcome(
            action=action,
            metric="customer_satisfied" if action.action_type == "send_reply" else "judged_correct",
            quality=OutcomeQuality.GOOD if good else OutcomeQuality.BAD,
            value=1.0 if good else 0.0,
            source=OutcomeSource.FOLLOW_UP,
            note="" if good else "The customer wrote back unhappy.",
            recorded_by="demo history",
            recorded_at=action.executed_at + timedelta(hours=6),
        )
    )
