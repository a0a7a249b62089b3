"""Mutations of runs and actions. Views, tasks, commands and tests all call these."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import hotsql, outbox, rows
from .gate import Guard, Verdict, gate
from .llm import model_label
from .models import (
    Action,
    ActionStatus,
    DeadLetter,
    Effect,
    Outcome,
    OutcomeQuality,
    OutcomeSource,
    PolicyOutcome,
    RunSnapshot,
    RunStatus,
    StepMode,
    StepRun,
    StepStatus,
    TraceEvent,
    TraceKind,
    WorkflowRun,
)
from .prompts.actions import pin_prompts
from .prompts.models import PromptStatus, PromptVersion, RunPromptPins
from .specs import InvalidInput, check_input, digest, get_spec
from .state import _remember_digest as remember_digest
from .state import chain_digest, normalise, update_state, write_first_state, write_state
from .state import validate as validate_state
from .tools import ToolError, get_action_type

log = logging.getLogger(__name__)


# Set by `buffered_trace`: the events recorded so far in the engine's current transaction.
_TRACE_BUFFER: ContextVar[list[TraceEvent] | None] = ContextVar("trace_buffer", default=None)


def record_trace(
    *,
    run: WorkflowRun | None = None,
    kind: TraceKind,
    message: str,
    step_name: str = "",
    data: dict[str, Any] | None = None,
    actor: str = "",
    run_id: Any = None,
) -> TraceEvent:
    """Write a trace event, or, inside `buffered_trace`, keep it for that block's one INSERT
    (the event then has no pk until the block ends). `run_id` instead of `run`: for a
    caller that has not read the run (and need not)."""
    if run is not None:
        run_id = run.pk
    elif run_id is None:
        raise ValueError("a trace event belongs to a run")
    event = rows.new(
        TraceEvent,
        run_id=run_id,
        kind=kind,
        message=message,
        step_name=step_name,
        data=data or {},
        actor=actor,
    )
    if run is not None:
        event.run = run
    buffer = _TRACE_BUFFER.get()
    if buffer is not None:
        buffer.append(event)
    else:
        hotsql.insert_traces([event])
    return event


@contextmanager
def buffered_trace() -> Iterator[None]:
    """Collect the trace events recorded in this block and write them in one INSERT at its
    end. Precondition: inside the transaction they belong to, with no savepoint in between
    that could roll back while the block goes on (an event kept here would outlive it). If
    the block raises, the events are dropped, as the transaction's rollback would drop them.
    Nested blocks write with the outermost."""
    if _TRACE_BUFFER.get() is not None:
        yield
        return
    events: list[TraceEvent] = []
    token = _TRACE_BUFFER.set(events)
    try:
        yield
    finally:
        _TRACE_BUFFER.reset(token)
    if events:
        hotsql.insert_traces(events)


def start_run(
    *,
    workflow: str,
    input: dict[str, Any],
    version: int | None = None,
    parent: WorkflowRun | None = None,
    idempotency_key: str | None = None,
    force_sync: bool = False,
) -> WorkflowRun:
    """Create a run with its plan stored (the DAG, one StepRun per planned step, the initial
    state as version 1, the prompt versions it keeps, the trace of its plan), all at once:
    on PostgreSQL one statement, one round trip. After commit the engine's drain is woken
    (the pending run is what it claims — the durable wake-up, no outbox row — and what the
    reconciler finds should no wake-up come).

    Raises InvalidInput (nothing created) if the workflow cannot plan this input. With an
    `idempotency_key`, a second call returns the first run.
    """
    spec = get_spec(workflow, version)
    try:
        check_input(spec.input_schema, input)
        plan = spec.make_plan(input, force_sync=force_sync)
    except InvalidInput:
        existing = _started(idempotency_key)
        if existing is not None:
            return existing
        raise
    plan_json = [p.to_json() for p in plan]
    initial = normalise(spec.initial_state(input))
    validate_state(initial)
    now = timezone.now()
    run = rows.new(
        WorkflowRun,
        workflow=spec.name,
        workflow_version=spec.version,
        input=input,
        plan=plan_json,
        plan_digest=digest(plan_json),
        objective_digest=digest(input),
        model_label=model_label(),
        parent=parent,
        idempotency_key=idempotency_key or None,
        durable=spec.durable,
        # Version 1 written with the row, and snapshotted with it.
        state=initial,
        state_version=1,
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(seconds=spec.timeout_seconds) if spec.timeout_seconds else None,
    )
    steps = [
        rows.new(
            StepRun,
            run=run,
            name=p.name,
            template=p.template,
            position=i,
            mode=p.mode,
            depends_on=list(p.depends_on),
            max_attempts=p.max_attempts,
            timeout_seconds=p.timeout_seconds,
        )
        for i, p in enumerate(plan)
    ]
    parallel = sum(1 for p in plan if p.mode == "async")
    trace = rows.new(
        TraceEvent,
        run=run,
        kind=TraceKind.SYSTEM,
        message=f"run of {spec.title} v{spec.version} planned: {len(plan)} steps"
        + (f" ({parallel} in parallel)" if parallel else "")
        + ": "
        + ", ".join(p.name for p in plan),
        data={"plan": plan_json},
        created_at=now,
    )
    changed = [d for d in initial if initial[d]]
    if connection.vendor != "postgresql":
        return _start_run_orm(spec, run, steps, trace, changed)
    snapshot = None
    if run.durable:
        snapshot = rows.new(
            RunSnapshot,
            run=run,
            version=1,
            conversation=initial["conversation"],
            workspace=initial["workspace"],
            systemic=initial["systemic"],
            changed=changed,
            reason="initial state",
            parent_digest="",
            digest=chain_digest("", initial),
        )
    sql, params = _start_sql(spec.agent, run, steps, snapshot, trace)
    # Prepared, bound on the server: the same text for every start of a workflow (binding
    # its hundred-odd values into the text on the client took a fifth of a start's CPU).
    [(agents, started)] = hotsql.rows(sql, params)
    if not started:
        existing = _started(idempotency_key)
        if existing is not None:
            return existing
        if not agents:
            raise _no_profile(spec)
        raise IntegrityError(f"run {run.pk} was not created")
    run.agent_id = started
    if snapshot is not None:
        key, first = (run.pk, 1), snapshot.digest
        transaction.on_commit(lambda: remember_digest(key, first))
    # No message of its own, no outbox row: the pending run is the durable wake-up, claimed
    # by the drain (one woken for any number of starts); the reconciler's scan is the
    # safety net. Outside a transaction this runs at once: the statement has committed.
    outbox.wake_after_commit(outbox.DRAIN)
    return rows.saved(run)


def _started(idempotency_key: str | None) -> WorkflowRun | None:
    if not idempotency_key:
        return None
    return WorkflowRun.objects.filter(idempotency_key=idempotency_key).first()


def _no_profile(spec: Any) -> InvalidInput:
    return InvalidInput(
        f"{spec.name} acts as agent {spec.agent!r}, which has no profile: create it "
        "in the admin (Agent profiles) with the team that reviews its work"
    )


# Each INSERT takes its rows only if the run's went in (its agent has a profile, its
# idempotency key is new): `FROM run`.
_START = """
WITH agent AS (SELECT id FROM {agents} WHERE name = %s ORDER BY id LIMIT 1),
run AS (
    INSERT INTO {runs} ({run_columns}, {agent_column}) SELECT {run_row}, agent.id FROM agent
    ON CONFLICT ({key_column}) DO NOTHING RETURNING {agent_column}
),
pins AS (
    INSERT INTO {pins} ({pin_columns}) SELECT %s::uuid, coalesce(
        (SELECT jsonb_object_agg(name, version) FROM {prompts} WHERE status = %s), '{{}}'
    ) FROM run
){children}
SELECT (SELECT count(*) FROM agent), (SELECT {agent_column} FROM run)
"""

# Identifiers from the models' metadata only; every value is a parameter.
_START_CHILD = """,
{name} AS (INSERT INTO {table} ({columns}) SELECT v.* FROM run, (VALUES {rows}) AS v)"""


def _start_sql(
    agent: str,
    run: WorkflowRun,
    steps: list[StepRun],
    snapshot: RunSnapshot | None,
    trace: TraceEvent,
) -> tuple[str, list[Any]]:
    """The one statement that writes a start's rows, and its parameters."""
    # The agent's profile belongs to escalations (a layer above): its table through the FK.
    agent_profile = WorkflowRun._meta.get_field("agent").related_model
    qn = connection.ops.quote_name
    run_row, run_params = rows.values(run, skip=("agent_id",))
    params: list[Any] = [agent, *run_params, run.pk, PromptStatus.ACTIVE]
    children = ""
    for name, objs in (("steps", steps), ("snapshot", [snapshot]), ("trace", [trace])):
        present = [o for o in objs if o is not None]
        if not present:
            continue
        model = type(present[0])
        listed = []
        for obj in present:
            row, row_params = rows.values(obj)
            listed.append(row)
            params += row_params
        children += _START_CHILD.format(
            name=name,
            table=rows.table(model),
            columns=", ".join(rows.columns(model)),
            rows=", ".join(listed),
        )
    pin_columns = ", ".join(rows.columns(RunPromptPins))
    sql = _START.format(
        agents=rows.table(agent_profile),
        runs=rows.table(WorkflowRun),
        run_columns=", ".join(rows.columns(WorkflowRun, skip=("agent_id",))),
        agent_column=qn("agent_id"),
        key_column=qn("idempotency_key"),
        run_row=run_row[1:-1],
        pins=rows.table(RunPromptPins),
        pin_columns=pin_columns,
        prompts=rows.table(PromptVersion),
        children=children,
    )
    return sql, params


def _start_run_orm(
    spec: Any, run: WorkflowRun, steps: list[StepRun], trace: TraceEvent, changed: list[str]
) -> WorkflowRun:
    """start_run through the ORM, in one transaction: embedded mode's SQLite."""
    # The agent's profile is the layer above's model; the run's foreign key names it.
    profiles: Any = WorkflowRun._meta.get_field("agent").related_model._default_manager
    try:
        with transaction.atomic():
            agent = profiles.filter(name=spec.agent).first()
            if agent is None:
                raise _no_profile(spec)
            run.agent = agent
            run.save(force_insert=True)
            # The run keeps the prompt versions live now, whatever is activated while it runs.
            pin_prompts(run=run, new=True)
            StepRun.objects.bulk_create(steps)
            write_first_state(run=run, changed=changed, reason="initial state")
            trace.save(force_insert=True)
            outbox.wake_after_commit(outbox.DRAIN)
    except IntegrityError:
        existing = _started(run.idempotency_key)
        if existing is not None:
            return existing
        raise
    return run


def finish_run(
    *,
    run: WorkflowRun,
    status: RunStatus,
    error: str = "",
    also: Sequence[str] = (),
    pending: list[str] | None = None,
) -> None:
    """Precondition: the caller holds the run's row lock. Only non-terminal runs finish.

    `also`: more fields the caller set on `run`, saved in the same UPDATE. With `pending`,
    the fields are added to it and left for the caller to save, in this transaction."""
    if run.is_terminal:
        return
    run.status = status
    run.error = error
    run.finished_at = run.updated_at = timezone.now()
    fields = ["status", "error", "finished_at", "updated_at", *also]
    if pending is not None:
        pending.extend(f for f in fields if f not in pending)
    else:
        run.save(update_fields=fields)
    record_trace(
        run=run,
        kind=TraceKind.ERROR if status == RunStatus.FAILED else TraceKind.SYSTEM,
        message=f"run {status}" + (f": {error}" if error else ""),
    )


_STATUS_FOR_OUTCOME = {
    PolicyOutcome.AUTO: ActionStatus.AUTO_APPROVED,
    PolicyOutcome.REVIEW: ActionStatus.ESCALATED,
    PolicyOutcome.BLOCK: ActionStatus.BLOCKED,
}


def status_for(outcome: PolicyOutcome) -> ActionStatus:
    """The status an action starts in, given the gate's verdict on it."""
    return _STATUS_FOR_OUTCOME[PolicyOutcome(outcome)]


def create_action(
    *,
    agent: Any,
    action_type: str,
    payload: dict[str, Any],
    confidence: float,
    rationale: str,
    idempotency_key: str,
    run: WorkflowRun | None = None,
    step_name: str = "",
    workflow: str = "",
    verdict: Verdict | None = None,
    force_review_reasons: Sequence[str] = (),
    declared_irreversible: bool = False,
    revision_of: Action | None = None,
    or_existing: bool = False,
) -> Action:
    """The one way an Action comes to exist: engine proposals, API submissions and the
    engine's own "needs attention" alike.

    Held against the registered gate (unless the caller brings its own `verdict`), written
    once with that verdict, and — when it needs a person — escalated in the same
    transaction. Precondition: inside the caller's transaction; the unique idempotency key
    refuses a duplicate (IntegrityError), so callers look for an existing action first —
    or pass `or_existing`: then a duplicate key returns the action that holds it (the
    INSERT asks, no read before it; on PostgreSQL).
    """
    tool = get_action_type(action_type)
    evaluated = verdict is None
    # On PostgreSQL the gate may answer from its cache unchecked: the INSERT checks it.
    fresh = not hotsql.enabled()
    while True:
        if evaluated:
            verdict = gate().evaluate(
                agent=agent,
                workflow=run.workflow if run is not None else workflow,
                action_type=tool.name,
                confidence=confidence,
                payload=payload,
                declared_irreversible=declared_irreversible,
                fresh=fresh,
            )
        assert verdict is not None
        action = _action_with_verdict(
            verdict,
            force_review_reasons=force_review_reasons,
            run=run,
            step_name=step_name,
            agent=agent,
            tool=tool,
            payload=payload,
            confidence=confidence,
            rationale=rationale,
            idempotency_key=idempotency_key,
            revision_of=revision_of,
        )
        # A fresh verdict carries no guard (the gate's contract); never asked a third time.
        guard = None if fresh else verdict.guard
        written = _insert_action(action, or_existing=or_existing, guard=guard)
        if written is not None:
            break
        # The gate's cache was stale (a policy or an agent changed): ask it afresh.
        fresh = True
    if not written:
        return Action.objects.get(idempotency_key=idempotency_key)
    outcome, reasons = PolicyOutcome(action.outcome), list(action.reasons)
    sampled = action.audit_sampled
    if run is not None and evaluated:
        record_trace(
            run=run,
            kind=TraceKind.POLICY,
            step_name=step_name,
            message=f"{tool.name}: {outcome.label.lower()} — " + "; ".join(reasons),
            data={
                "action": str(action.pk),
                "outcome": outcome,
                "policy_id": verdict.policy_id,
                "policy_version": verdict.policy_version,
            },
        )
    if outcome == PolicyOutcome.REVIEW:
        gate().escalate(action=action, team_id=verdict.team_id)
    elif sampled and (not tool.reversible or declared_irreversible):
        gate().audit(action=action, team_id=verdict.team_id)
    return action


def _action_with_verdict(
    verdict: Verdict,
    *,
    force_review_reasons: Sequence[str],
    run: WorkflowRun | None,
    step_name: str,
    agent: Any,
    tool: Any,
    payload: dict[str, Any],
    confidence: float,
    rationale: str,
    idempotency_key: str,
    revision_of: Action | None,
) -> Action:
    """The unsaved action, with the gate's verdict (and a failed verification's reasons)."""
    outcome, reasons = PolicyOutcome(verdict.outcome), list(verdict.reasons)
    if force_review_reasons and outcome == PolicyOutcome.AUTO:
        # A failed verification never silently passes: the action goes to a person, with
        # the failure first among the reasons.
        outcome, reasons = PolicyOutcome.REVIEW, [*force_review_reasons]
    elif force_review_reasons:
        reasons = [*force_review_reasons, *reasons]
    probability, sampled = (
        gate().draw_audit(verdict=verdict) if outcome == PolicyOutcome.AUTO else (None, False)
    )
    # Evaluated before the row exists, so it is written once, with its verdict (the
    # evaluation reads policies only, never the action).
    return rows.new(
        Action,
        audit_probability=probability,
        audit_sampled=sampled,
        run=run,
        step_name=step_name,
        agent=agent,
        action_type=tool.name,
        payload=payload,
        confidence=confidence,
        rationale=rationale,
        idempotency_key=idempotency_key,
        payload_digest=digest(payload),
        outcome=outcome,
        reasons=reasons,
        policy_id=verdict.policy_id,
        policy_version=verdict.policy_version,
        status=status_for(outcome),
        revision_of=revision_of,
        revision_round=revision_of.revision_round + 1 if revision_of is not None else 0,
    )


def _insert_action(action: Action, *, or_existing: bool, guard: Guard | None = None) -> bool | None:
    """Write a new action's row; False if `or_existing` and its key was taken already; None
    (nothing written) if its verdict's `guard` no longer holds."""
    if connection.vendor != "postgresql":
        if or_existing and Action.objects.filter(idempotency_key=action.idempotency_key).exists():
            return False
        action.save(force_insert=True)
        return True
    row, params = rows.values(action)
    conflict = " ON CONFLICT (idempotency_key) DO NOTHING" if or_existing else ""
    if guard is None:
        source, extra = f"VALUES {row}", []
    else:
        # The guard's SQL is the gate's constant text; its values are parameters.
        source = f"SELECT v.* FROM (VALUES {row}) AS v WHERE {guard.sql}"  # noqa: S608
        extra = [*guard.params]
    sql = _INSERT_ACTION.format(
        actions=rows.table(Action), columns=", ".join(rows.columns(Action)), source=source
    )
    # Prepared: the same few texts for every proposal.
    if guard is not None and or_existing:
        # Nothing written: a taken key, or a stale verdict? The guard says which (the same
        # snapshot answers it twice).
        [(inserted, held)] = hotsql.rows(
            f"WITH written AS ({sql}{conflict} RETURNING 1) "  # noqa: S608
            f"SELECT EXISTS (SELECT 1 FROM written), {guard.sql}",
            [*params, *extra, *extra],
        )
        if not inserted:
            return False if held else None
    elif guard is not None:
        if not hotsql.rows(f"{sql} RETURNING 1", [*params, *extra]):
            return None
    elif or_existing:
        if not hotsql.rows(f"{sql}{conflict} RETURNING 1", params):
            return False
    else:
        hotsql.rows(sql, params)
    rows.saved(action)
    return True


# Identifiers from the models' metadata only; every value is a parameter.
_INSERT_ACTION = "INSERT INTO {actions} ({columns}) {source}"


def propose_action(
    *,
    run: WorkflowRun,
    step_name: str,
    action_type: str,
    payload: dict[str, Any],
    confidence: float,
    rationale: str,
    force_review_reasons: list[str] | tuple[str, ...] = (),
    revision_of: Action | None = None,
) -> Action:
    """Record what the agent proposes and hold it against policy.

    AUTO marks it auto-approved (the engine executes it), REVIEW escalates it to a person,
    BLOCK refuses it. Idempotent per (run, step, action type) and revision round:
    `revision_of` is the action a person answered, which this one revises.
    """
    tool = get_action_type(action_type)
    round_ = revision_of.revision_round + 1 if revision_of is not None else 0
    key = f"{run.pk}:{step_name}:{action_type}" + (f":r{round_}" if round_ else "")
    return create_action(
        run=run,
        step_name=step_name,
        agent=run.agent,
        action_type=tool.name,
        payload=payload,
        confidence=confidence,
        rationale=rationale,
        idempotency_key=key,
        force_review_reasons=force_review_reasons,
        revision_of=revision_of,
        # A step attempt again (the last one's commit lost): the action it proposed.
        or_existing=True,
    )


def record_effect(
    *,
    key: str,
    result: dict[str, Any],
    action: Action | None = None,
    run: WorkflowRun | None = None,
    step_name: str = "",
    fenced: bool = False,
) -> dict[str, Any]:
    """The one writer of the effect ledger: record that the effect `key` was applied with
    `result`; returns the recorded result (the first writer's, if another got there first).

    `fenced`: the caller's commit is fenced (it holds the run's row lock, a step lease, or
    the action's row lock after checking its status), so whoever meets a key recorded first
    is an attempt that could not commit anyway: no savepoint (two round trips), and its
    IntegrityError fails it outright. Otherwise a savepoint survives the duplicate.
    """
    effect = Effect(key=key, action=action, run=run, step_name=step_name, result=result)
    if fenced:
        effect.save(force_insert=True)
        return result
    try:
        with transaction.atomic():
            effect.save(force_insert=True)
    except IntegrityError:
        return dict(Effect.objects.get(key=key).result)
    return result


# An Action read with what the ledger held for its key, under a lock its execution still
# holds (StepContext.action in a group round): that result (None: nothing), in its __dict__
# under this name; execute_action takes it rather than ask the ledger again.
LEDGER_READ = "_ledger_read"


def execute_action(*, action: Action) -> Action:
    """Apply an approved action's effect exactly once.

    Precondition: the caller holds the run's row lock (the coordinator) or the lease of the
    step attempt executing it (whose commit the lease fences). The effect ledger's unique key
    is the backstop: a second execution finds the recorded effect and changes nothing.
    """
    if action.status not in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
        raise ValueError(f"cannot execute an action that is {action.status}")
    if LEDGER_READ in action.__dict__:
        recorded = action.__dict__.pop(LEDGER_READ)
    else:
        recorded = _recorded_effect(action.idempotency_key)
    if recorded is not None:
        log.info("effect %s already recorded; not applying again", action.idempotency_key)
        result = recorded
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
        action.status = ActionStatus.EXECUTED
        action.result = result
        action.executed_at = timezone.now()
        if action.run_id is not None and connection.vendor == "postgresql":
            # A run's actions are executed under its row lock or by a step attempt its
            # lease fences (a duplicate key fails the attempt, see record_effect): the
            # ledger row and the action's new status in one statement.
            _record_executed(action, result)
            return _executed(action, result)
        # An action outside a run may race another execution of itself.
        result = record_effect(
            key=action.idempotency_key,
            result=result,
            action=action,
            run=action.run,
            step_name=action.step_name,
            fenced=action.run_id is not None,
        )
    action.status = ActionStatus.EXECUTED
    action.result = result
    action.executed_at = timezone.now()
    action.save(update_fields=["status", "result", "executed_at"])
    return _executed(action, result)


def _recorded_effect(key: str) -> dict[str, Any] | None:
    """The result the ledger holds for `key`, if any (asked before applying an effect)."""
    if connection.vendor != "postgresql":
        found = Effect.objects.filter(key=key).values_list("result", flat=True).first()
        return None if found is None else dict(found)
    found = hotsql.rows(_RECORDED_EFFECT, [key])
    return dict(hotsql.loads(found[0][0])) if found else None


def _record_executed(action: Action, result: dict[str, Any]) -> None:
    effect = rows.new(
        Effect,
        key=action.idempotency_key,
        action=action,
        run_id=action.run_id,
        step_name=action.step_name,
        result=result,
    )
    row, params = rows.values(effect)
    sql = _RECORD_EXECUTED.format(
        effects=rows.table(Effect),
        columns=", ".join(rows.columns(Effect)),
        row=row,
        actions=rows.table(Action),
    )
    hotsql.rows(
        sql,
        [
            *params,
            action.status,
            connection.ops.adapt_json_value(result, None),
            action.executed_at,
            action.pk,
        ],
    )


_RECORDED_EFFECT = "SELECT result FROM workflows_effect WHERE key = %s"
# Identifiers from the models' metadata only; every value is a parameter.
_RECORD_EXECUTED = """
WITH effect AS (INSERT INTO {effects} ({columns}) VALUES {row})
UPDATE {actions} SET status = %s, result = %s::jsonb, executed_at = %s WHERE id = %s
"""


def _executed(action: Action, result: dict[str, Any]) -> Action:
    """After an action's effect is recorded: its trace, its audit if it was drawn."""
    if action.run_id is not None:
        record_trace(
            run_id=action.run_id,
            kind=TraceKind.EXECUTED,
            step_name=action.step_name,
            message=f"executed {action.action_type}",
            data={"action": str(action.pk), "result": result},
        )
    if action.audit_sampled:
        gate().audit(action=action, team_id=None)
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


# --- operating runs: cancel, retry, roll back (admins, from the run page) -----------------


class InvalidTransition(Exception):
    """The run (or step) is not in a status this change starts from; nothing changed."""


def _lock_run(run_id: Any) -> WorkflowRun:
    try:
        return WorkflowRun.objects.select_for_update(no_key=True).get(pk=run_id)
    except WorkflowRun.DoesNotExist:
        raise InvalidTransition("no such run") from None


def cancel_run(*, run_id: Any, actor: str, reason: str) -> WorkflowRun:
    """Stop a run that is not finished: pending steps are cancelled, a step running now is
    fenced out (its commit is refused, its effects roll back), open escalations are cancelled.

    Starts from pending, running, waiting; refuses finished runs.
    """
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the run is cancelled."})
    with transaction.atomic():
        run = _lock_run(run_id)
        if run.is_terminal:
            raise InvalidTransition(f"the run is already {run.status}")
        StepRun.objects.filter(run=run).exclude(
            status__in=[StepStatus.SUCCEEDED, StepStatus.FAILED]
        ).update(status=StepStatus.CANCELLED, lease_owner="", lease_expires_at=None)
        # Whatever waits on people for this run is withdrawn by the layer that owns it.
        escalations = gate().run_cancelled(run=run)
        record_trace(
            run=run,
            kind=TraceKind.AUDIT,
            actor=actor,
            message=f"{actor} cancelled the run: {reason}",
            data={"escalations_cancelled": escalations},
        )
        run.lease_owner, run.lease_expires_at, run.wake_at = "", None, None
        run.save(update_fields=["lease_owner", "lease_expires_at", "wake_at"])
        finish_run(run=run, status=RunStatus.CANCELLED, error=f"cancelled by {actor}: {reason}")
    return run


def cancel_step(*, run_id: Any, step_name: str, actor: str, reason: str) -> StepRun:
    """Skip one async (gathering/verification) step: it is cancelled, what depends on it goes
    ahead without its output. Sync steps are the critical path: cancel the run instead."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the step is cancelled."})
    with transaction.atomic():
        run = _lock_run(run_id)
        if run.is_terminal:
            raise InvalidTransition(f"the run is already {run.status}")
        step = (
            StepRun.objects.select_for_update(no_key=True).filter(run=run, name=step_name).first()
        )
        if step is None:
            raise InvalidTransition(f"the run has no step {step_name!r}")
        if step.mode != StepMode.ASYNC:
            raise InvalidTransition(
                f"{step_name} is on the critical path (sync); cancel the run instead"
            )
        if step.status not in (
            StepStatus.PENDING,
            StepStatus.QUEUED,
            StepStatus.RUNNING,
            StepStatus.WAITING,
        ):
            raise InvalidTransition(f"{step_name} is already {step.status}")
        step.status = StepStatus.CANCELLED
        step.lease_owner, step.lease_expires_at = "", None
        step.finished_at = timezone.now()
        step.error = f"cancelled by {actor}: {reason}"
        step.save(
            update_fields=["status", "lease_owner", "lease_expires_at", "finished_at", "error"]
        )
        record_trace(
            run=run,
            kind=TraceKind.AUDIT,
            actor=actor,
            step_name=step_name,
            message=f"{actor} cancelled step {step_name}: {reason}",
        )
        outbox.enqueue(outbox.ADVANCE, str(run.pk))
    return step


def _reopen(run: WorkflowRun, *, actor: str) -> None:
    """Precondition: run row locked. Back to pending, with time to finish, and enqueued."""
    now = timezone.now()
    fields = ["status", "error", "finished_at", "updated_at", "attention", "wake_at"]
    run.status = RunStatus.PENDING
    run.error = ""
    run.attention = ""
    run.finished_at = None
    run.wake_at = None
    run.updated_at = now
    if run.deadline_at is not None and run.deadline_at <= now:
        spec = get_spec(run.workflow, run.workflow_version)
        run.deadline_at = now + timedelta(seconds=spec.timeout_seconds or 3600)
        fields.append("deadline_at")
        record_trace(
            run=run,
            kind=TraceKind.AUDIT,
            actor=actor,
            message=f"deadline extended to {run.deadline_at:%Y-%m-%d %H:%M:%S} UTC",
        )
    run.save(update_fields=fields)
    outbox.enqueue(outbox.ADVANCE, str(run.pk))


def retry_run(*, run_id: Any, actor: str, reason: str = "") -> WorkflowRun:
    """Give a failed run's failed steps fresh attempts (dead letters marked retried).

    Starts from failed only. Effects already applied stay applied: the ledger keys make the
    retried steps find them instead of applying them again.
    """
    with transaction.atomic():
        run = _lock_run(run_id)
        if run.status != RunStatus.FAILED:
            raise InvalidTransition(f"only failed runs can be retried; this one is {run.status}")
        now = timezone.now()
        steps = list(
            StepRun.objects.filter(run=run, status__in=[StepStatus.FAILED, StepStatus.CANCELLED])
        )
        outputs = normalise(run.state)["workspace"].get("outputs", {})
        retried = []
        for step in steps:
            if step.status == StepStatus.CANCELLED and step.name in outputs:
                continue
            step.status = StepStatus.PENDING
            step.attempts = 0
            step.not_before = None
            step.finished_at = None
            step.save(update_fields=["status", "attempts", "not_before", "finished_at"])
            retried.append(step.name)
        DeadLetter.objects.filter(run=run, retried_at__isnull=True).update(
            retried_at=now, retried_by=actor
        )
        record_trace(
            run=run,
            kind=TraceKind.AUDIT,
            actor=actor,
            message=f"{actor} retried the run ({', '.join(retried) or 'no failed step'})"
            + (f": {reason.strip()}" if reason.strip() else ""),
            data={"steps": retried},
        )
        _reopen(run, actor=actor)
    return run


def rollback_run(*, run_id: Any, to_version: int, actor: str, reason: str) -> WorkflowRun:
    """Restore the state of an earlier snapshot as a new version (history is never rewritten)
    and re-run the steps whose outputs that state does not have. Audited, with the reason.

    Effects already applied are listed in the audit event, not undone: the outside world
    saw them. Re-run steps find them in the ledger rather than applying them twice.
    Refused while a worker holds the run's lease or one of its steps, and for cancelled runs.
    """
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why you roll the run back; it is audited."})
    with transaction.atomic():
        run = _lock_run(run_id)
        if run.status == RunStatus.CANCELLED:
            raise InvalidTransition("a cancelled run cannot be rolled back")
        if not run.durable:
            raise InvalidTransition("this run keeps no snapshots")
        steps = list(StepRun.objects.select_for_update(no_key=True).filter(run=run))
        if run.has_live_lease or any(s.has_live_lease for s in steps):
            raise InvalidTransition("a worker is advancing this run; try again in a moment")
        snapshot = RunSnapshot.objects.filter(run=run, version=to_version).first()
        if snapshot is None:
            raise ValidationError({"version": f"the run has no state v{to_version}"})
        if to_version >= run.state_version:
            raise ValidationError({"version": f"v{to_version} is the current state"})
        kept = [
            {"key": e.key, "step": e.step_name, "applied_at": e.created_at.isoformat()}
            for e in Effect.objects.filter(run=run, created_at__gt=snapshot.created_at)
        ]
        restored = snapshot.data()
        outputs = restored["workspace"].get("outputs", {})
        reset = []
        for step in steps:
            if step.name in outputs:
                if step.status != StepStatus.SUCCEEDED:
                    step.status = StepStatus.SUCCEEDED
                    step.output = outputs[step.name]
                    step.save(update_fields=["status", "output"])
                continue
            if step.status == StepStatus.PENDING and not step.attempts:
                continue
            step.status = StepStatus.PENDING
            step.attempts = 0
            step.output = None
            step.error = ""
            step.waiting_for = None
            step.not_before = None
            step.finished_at = None
            step.lease_owner, step.lease_expires_at = "", None
            step.save(
                update_fields=[
                    "status",
                    "attempts",
                    "output",
                    "error",
                    "waiting_for",
                    "not_before",
                    "finished_at",
                    "lease_owner",
                    "lease_expires_at",
                ]
            )
            reset.append(step.name)
        previous = run.state_version
        write_state(
            run=run,
            expected_version=previous,
            new_state=normalise(restored),
            changed=["conversation", "workspace", "systemic"],
            reason=f"rollback to v{to_version}: {reason}",
            actor=actor,
        )
        record_trace(
            run=run,
            kind=TraceKind.AUDIT,
            actor=actor,
            message=f"{actor} rolled the state back from v{previous} to v{to_version} "
            f"(now v{run.state_version}): {reason}"
            + (f"; {len(kept)} effect(s) already applied stay applied" if kept else ""),
            data={
                "from_version": previous,
                "to_version": to_version,
                "new_version": run.state_version,
                "reason": reason,
                "steps_reset": reset,
                "effects_kept": kept,
            },
        )
        _reopen(run, actor=actor)
    return run


def record_message(*, run: WorkflowRun, role: str, content: str, actor: str = "") -> WorkflowRun:
    """Add a message to a run's conversation (e.g. the customer wrote back): a versioned
    write like any other, retried if a step committed in between."""
    if role not in ("customer", "agent", "reviewer"):
        raise ValidationError({"role": "role is customer, agent or reviewer"})
    if not content.strip():
        raise ValidationError({"content": "a message needs content"})
    at = timezone.now().isoformat()
    with transaction.atomic():
        update_state(
            run=run,
            changes=[
                (
                    "conversation",
                    lambda c: {
                        **c,
                        "messages": [
                            *c.get("messages", []),
                            {"role": role, "content": content, "at": at},
                        ],
                    },
                )
            ],
            reason=f"{role} message",
            actor=actor,
        )
        record_trace(
            run=run, kind=TraceKind.OBSERVED, actor=actor, message=f"{role} wrote: {content[:200]}"
        )
    return run
