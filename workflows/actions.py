"""Mutations of runs and actions. Views, tasks, commands and tests all call these."""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from escalations.models import AgentProfile

from .models import (
    Action,
    ActionStatus,
    Effect,
    Outcome,
    OutcomeQuality,
    OutcomeSource,
    PolicyOutcome,
    RunStatus,
    StepRun,
    TraceEvent,
    TraceKind,
    WorkflowRun,
)
from .specs import get_spec
from .tools import ToolError, get_action_type

log = logging.getLogger(__name__)


def record_trace(
    *,
    run: WorkflowRun,
    kind: TraceKind,
    message: str,
    step_name: str = "",
    data: dict[str, Any] | None = None,
    actor: str = "",
) -> TraceEvent:
    return TraceEvent.objects.create(
        run=run, kind=kind, message=message, step_name=step_name, data=data or {}, actor=actor
    )


def start_run(*, workflow: str, input: dict[str, Any]) -> WorkflowRun:
    """Create a run with its plan (one StepRun per step) and enqueue it after commit."""
    from .llm import get_model
    from .tasks import enqueue_advance

    spec = get_spec(workflow)
    agent = AgentProfile.objects.get(name=spec.agent)
    with transaction.atomic():
        run = WorkflowRun.objects.create(
            workflow=spec.name,
            workflow_version=spec.version,
            agent=agent,
            input=input,
            model_label=get_model().label,
        )
        StepRun.objects.bulk_create(
            StepRun(run=run, name=s.name, position=i) for i, s in enumerate(spec.steps)
        )
        record_trace(
            run=run,
            kind=TraceKind.SYSTEM,
            message=f"run of {spec.title} v{spec.version} created with "
            f"{len(spec.steps)} steps: {', '.join(s.name for s in spec.steps)}",
        )
        transaction.on_commit(lambda: enqueue_advance(run.pk))
    return run


def finish_run(*, run: WorkflowRun, status: RunStatus, error: str = "") -> None:
    """Precondition: the caller holds the run's row lock. Only non-terminal runs finish."""
    if run.is_terminal:
        return
    run.status = status
    run.error = error
    run.finished_at = run.updated_at = timezone.now()
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    record_trace(
        run=run,
        kind=TraceKind.ERROR if status == RunStatus.FAILED else TraceKind.SYSTEM,
        message=f"run {status}" + (f": {error}" if error else ""),
    )


def propose_action(
    *,
    run: WorkflowRun,
    step_name: str,
    action_type: str,
    payload: dict[str, Any],
    confidence: float,
    rationale: str,
) -> Action:
    """Record what the agent proposes and hold it against policy.

    AUTO marks it auto-approved (the engine executes it), REVIEW escalates it to a person,
    BLOCK refuses it. Idempotent per (run, step, action type).
    """
    from escalations.actions import escalate_action
    from escalations.policy import evaluate

    tool = get_action_type(action_type)
    key = f"{run.pk}:{step_name}:{action_type}"
    existing = Action.objects.filter(idempotency_key=key).first()
    if existing is not None:
        return existing
    action = Action.objects.create(
        run=run,
        step_name=step_name,
        agent=run.agent,
        action_type=tool.name,
        payload=payload,
        confidence=confidence,
        rationale=rationale,
        idempotency_key=key,
    )
    decision = evaluate(
        agent=run.agent,
        workflow=run.workflow,
        action_type=tool.name,
        confidence=confidence,
        payload=payload,
    )
    action.outcome = decision.outcome
    action.reasons = decision.reasons
    action.policy_id = decision.policy_id
    action.policy_version = decision.policy_version
    action.status = {
        PolicyOutcome.AUTO: ActionStatus.AUTO_APPROVED,
        PolicyOutcome.REVIEW: ActionStatus.ESCALATED,
        PolicyOutcome.BLOCK: ActionStatus.BLOCKED,
    }[decision.outcome]
    action.save(update_fields=["outcome", "reasons", "policy", "policy_version", "status"])
    record_trace(
        run=run,
        kind=TraceKind.POLICY,
        step_name=step_name,
        message=f"{tool.name}: {decision.outcome.label.lower()} — " + "; ".join(decision.reasons),
        data={
            "action": str(action.pk),
            "outcome": decision.outcome,
            "policy_id": decision.policy_id,
            "policy_version": decision.policy_version,
        },
    )
    if decision.outcome == PolicyOutcome.REVIEW:
        escalate_action(action=action, team_id=decision.team_id)
    return action


def execute_action(*, action: Action) -> Action:
    """Apply an approved action's effect exactly once.

    Precondition: the caller holds the run's row lock. The effect ledger's unique key is the
    backstop: a second execution finds the recorded effect and changes nothing.
    """
    if action.status not in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
        raise ValueError(f"cannot execute an action that is {action.status}")
    recorded = Effect.objects.filter(key=action.idempotency_key).first()
    if recorded is not None:
        log.info("effect %s already recorded; not applying again", recorded.key)
        result = recorded.result
    else:
        tool = get_action_type(action.action_type)
        payload = action.payload_to_execute
        try:
            result = tool.execute(tool.validate(payload), action.idempotency_key)
        except ToolError as exc:
            action.status = ActionStatus.FAILED
            action.error = str(exc)
            action.save(update_fields=["status", "error"])
            if action.run is not None:
                record_trace(
                    run=action.run,
                    kind=TraceKind.ERROR,
                    step_name=action.step_name,
                    message=f"{action.action_type} failed: {exc}",
                )
            return action
        try:
            with transaction.atomic():
                Effect.objects.create(key=action.idempotency_key, action=action, result=result)
        except IntegrityError:
            result = Effect.objects.get(key=action.idempotency_key).result
    action.status = ActionStatus.EXECUTED
    action.result = result
    action.executed_at = timezone.now()
    action.save(update_fields=["status", "result", "executed_at"])
    if action.run is not None:
        record_trace(
            run=action.run,
            kind=TraceKind.EXECUTED,
            step_name=action.step_name,
            message=f"executed {action.action_type}",
            data={"action": str(action.pk), "result": result},
        )
    return action


def record_outcome(
    *,
    metric: str,
    quality: OutcomeQuality,
    source: OutcomeSource,
    action: Action | None = None,
    run: WorkflowRun | None = None,
    value: float | None = None,
    note: str = "",
    data: dict[str, Any] | None = None,
    recorded_by: str = "",
) -> Outcome:
    """Attach what happened later to an action (and its run) or to a run."""
    if action is None and run is None:
        raise ValueError("an outcome needs an action or a run")
    if action is not None and run is None:
        run = action.run
    outcome = Outcome.objects.create(
        action=action,
        run=run,
        metric=metric,
        quality=OutcomeQuality(quality),
        source=OutcomeSource(source),
        value=value,
        note=note,
        data=data or {},
        recorded_by=recorded_by,
    )
    if run is not None:
        record_trace(
            run=run,
            kind=TraceKind.OBSERVED,
            message=f"outcome {metric}: {outcome.quality}" + (f" — {note}" if note else ""),
            actor=recorded_by,
            data={"outcome": outcome.pk, "source": outcome.source},
        )
    return outcome
