"""Recovery: before a paused run resumes, check nothing changed under it; if something did,
a person decides whether it goes on (the engine's own `resume_run` action)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from . import hotsql
from .actions import create_action, execute_action, record_trace
from .ending import fail_locked
from .gate import FixedVerdict
from .models import (
    Action,
    ActionStatus,
    Effect,
    PolicyOutcome,
    RunSnapshot,
    RunStatus,
    StepRun,
    TraceKind,
    WorkflowRun,
)
from .specs import digest
from .state import normalise, verify_chain, write_state
from .tools import ACTION_TYPES, ActionType

RESUME_RUN = "resume_run"


def with_effect(actions: QuerySet[Action]) -> list[Action]:
    """Each annotated with whether the ledger holds its effect (what a recovery check asks)."""
    return list(actions.annotate(has_effect=Exists(Effect.objects.filter(action=OuterRef("pk")))))


_ACTION_COLUMNS = hotsql.Columns(Action, "a")
# An action's columns (alias a) and whether the ledger holds its effect: `action_with_effect`
# builds the row back. Column and table names from the models, never from input.
ACTION_WITH_EFFECT = (
    f"{_ACTION_COLUMNS.sql}, EXISTS (SELECT 1 FROM {Effect._meta.db_table} e"  # noqa: S608
    " WHERE e.action_id = a.id)"
)
_WITH_EFFECT = (
    f"SELECT {ACTION_WITH_EFFECT} FROM {Action._meta.db_table} a"  # noqa: S608
    " WHERE a.id = ANY(%s)"
)


def action_with_effect(row: Sequence[Any]) -> Action:
    """An action from a row that starts with `ACTION_WITH_EFFECT`, `has_effect` set."""
    action: Any = _ACTION_COLUMNS.build(row)
    action.has_effect = row[_ACTION_COLUMNS.width]
    return action


def actions_with_effect(ids: list[Any]) -> list[Action]:
    """`with_effect` of the actions with these ids, as one prepared statement (the engine's
    every resume asks it)."""
    if not hotsql.enabled():
        return with_effect(Action.objects.filter(pk__in=ids))
    rows = hotsql.rows(_WITH_EFFECT, [[uuid.UUID(str(i)) for i in ids]])
    return [action_with_effect(row) for row in rows]


def _resume_run_effect(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {"resumed": True, "run": payload.get("run")}


# The engine's own action type: what a person approves to let a run continue after recovery
# found a mismatch. Declared here, next to the only code that proposes it.
ACTION_TYPES.setdefault(
    RESUME_RUN,
    ActionType(
        name=RESUME_RUN,
        label="Resume a run whose state changed while it was paused",
        reversible=False,
        customer_facing=False,
        required_fields=("run",),
        execute=_resume_run_effect,
    ),
)


def recovery_check(
    run: WorkflowRun,
    resuming: list[StepRun],
    *,
    cause: str,
    awaited: dict[str, Action] | None = None,
    chain: list[dict[str, Any]] | None = None,
) -> bool:
    """Verify the run may go on; record the check in the trace. Precondition: run row locked.

    On a mismatch the run waits for a person (a resume_run escalation) and False is returned.
    `awaited`: the waiting steps' actions as `_awaited_actions` read them under this lock;
    `chain`: the run's state chain as `state.chains` read it under this lock.
    """
    problems = list(verify_chain(run, chain))
    checks = [f"state chain intact up to v{run.state_version}"] if not problems else []
    if digest(run.input) != run.objective_digest:
        problems.append("the run's objective (its input) changed since it started")
    else:
        checks.append("objective unchanged")
    if digest(run.plan) != run.plan_digest:
        problems.append("the run's plan changed since it was stored")
    wanted = [a for s in resuming for a in (s.waiting_for or {}).get("actions", [])]
    # A step that settles its actions one by one resumes while some are still undecided.
    one_by_one = {
        str(a)
        for s in resuming
        if (s.waiting_for or {}).get("each")
        for a in (s.waiting_for or {}).get("actions", [])
    }
    if awaited is None:
        found = actions_with_effect(wanted) if wanted else []
    else:
        found = [awaited[str(a)] for a in dict.fromkeys(wanted) if str(a) in awaited]
    for action in found:
        label = f"{action.action_type} ({action.pk})"
        if action.run_id != run.pk:
            problems.append(f"action {label} does not belong to this run")
            continue
        if action.payload_digest and digest(action.payload) != action.payload_digest:
            problems.append(f"action {label}'s payload changed since it was proposed")
        if action.status == ActionStatus.EXECUTED or getattr(action, "has_effect", False):
            problems.append(f"action {label} was already executed elsewhere")
        elif action.status not in (ActionStatus.APPROVED, ActionStatus.REJECTED) and not (
            str(action.pk) in one_by_one and action.status == ActionStatus.ESCALATED
        ):
            problems.append(f"action {label} is {action.status}, not decided")
    if wanted and not problems:
        checks.append(f"{len(wanted)} awaited action(s) unchanged, not yet executed")
    if len({*wanted}) != len(found):
        problems.append("an awaited action no longer exists")
    ok = not problems
    record_trace(
        run=run,
        kind=TraceKind.RECOVERY,
        message=f"recovery check before resuming after {cause}: "
        + ("passed — " + "; ".join(checks) if ok else "REFUSED — " + "; ".join(problems)),
        data={"cause": cause, "ok": ok, "checks": checks, "problems": problems},
    )
    if not ok:
        needs_attention(run, problems)
    return ok


def needs_attention(run: WorkflowRun, problems: list[str]) -> None:
    n = Action.objects.filter(run=run, action_type=RESUME_RUN).count() + 1
    payload = {"run": str(run.pk), "problems": problems}
    run.attention = "; ".join(problems)[:5000]
    run.status = RunStatus.WAITING
    run.lease_owner = ""
    run.lease_expires_at = None
    run.updated_at = timezone.now()
    run.save(update_fields=["attention", "status", "lease_owner", "lease_expires_at", "updated_at"])
    create_action(
        run=run,
        agent=run.agent,
        action_type=RESUME_RUN,
        payload=payload,
        confidence=0.0,
        rationale="Recovery found the run's state changed while it was paused. Approve to "
        "continue from the state as it is now; reject to fail the run.",
        idempotency_key=f"{run.pk}:__recovery__:{n}",
        # The engine's own finding, not a policy's: a person looks, whatever the policies say.
        verdict=FixedVerdict(
            outcome=PolicyOutcome.REVIEW, reasons=problems, team_id=run.agent.team_id
        ),
    )


def attention_resolved(run: WorkflowRun) -> bool:
    """A run flagged by recovery: go on only once a person approved (re-anchoring the state),
    fail it if they rejected. Precondition: run row locked."""
    action = Action.objects.filter(run=run, action_type=RESUME_RUN).order_by("-created_at").first()
    if action is None or action.status == ActionStatus.ESCALATED:
        return False
    decision = getattr(getattr(action, "escalation", None), "decision", None)
    who = decision.decided_by.get_username() if decision is not None else ""
    if action.status != ActionStatus.APPROVED:
        reason = decision.reason if decision is not None else action.status
        fail_locked(run, f"not resumed after a recovery mismatch: {reason}")
        return False
    execute_action(action=action)
    run.objective_digest = digest(run.input)
    run.plan_digest = digest(run.plan)
    run.attention = ""
    run.save(update_fields=["objective_digest", "plan_digest", "attention"])
    if run.durable:
        # The chain is checked from here on: a person vouched for the state as it is now.
        latest = max(
            run.state_version,
            RunSnapshot.objects.filter(run=run)
            .order_by("-version")
            .values_list("version", flat=True)
            .first()
            or 0,
        )
        WorkflowRun.objects.filter(pk=run.pk).update(state_version=latest)
        write_state(
            run=run,
            expected_version=latest,
            new_state=normalise(run.state),
            changed=[],
            reason=f"state accepted by {who} after a recovery mismatch",
            actor=who,
            anchor=True,
        )
    record_trace(
        run=run,
        kind=TraceKind.RECOVERY,
        actor=who,
        message=f"{who} accepted the state as it is now; the run continues",
    )
    return True
