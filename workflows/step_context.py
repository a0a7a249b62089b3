"""What a step's function is handed: the run, its state, the model, and the effect ledger."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import hotsql
from .actions import LEDGER_READ, record_effect, record_trace
from .llm import ModelClient
from .models import Action, Effect, StepRun, TraceKind, WorkflowRun
from .recovery import ACTION_WITH_EFFECT, action_with_effect
from .state import StateView

log = logging.getLogger(__name__)

# With whether the ledger holds its effect (what the engine's round asks of an action a step
# then waits for), and what the ledger holds for its key (what executing it asks). Column and
# table names from the models, never from input.
_READ_ACTION = (
    f"SELECT {ACTION_WITH_EFFECT}, (SELECT k.result FROM {Effect._meta.db_table} k"  # noqa: S608
    f" WHERE k.key = a.idempotency_key) FROM {Action._meta.db_table} a"
    " WHERE a.id = %s AND a.run_id = %s"
)


@dataclass
class StepContext:
    run: WorkflowRun
    step: StepRun
    model: ModelClient
    state: StateView
    params: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False  # the step waited (for a person or a wake-up) and runs again
    woken: bool = False  # ... and it is the wake-up it asked for
    deadline: float = float("inf")  # time.monotonic() by which the attempt must finish
    # The actions `action` read in this attempt, by id, with their ledger flag (under the
    # run's row lock, which the engine holds: only this attempt can have changed them since).
    read: dict[str, Action] = field(default_factory=dict, repr=False)
    # The run's row and its steps' are locked for the whole attempt (a group round's): what
    # `action` reads of the ledger cannot change before the step commits (every execution
    # of a run's action holds that lock, or fences on it), so executing it asks no more.
    locked: bool = False

    def trace(self, kind: TraceKind, message: str, **data: Any) -> None:
        record_trace(run=self.run, kind=kind, message=message, step_name=self.step.name, data=data)

    def action(self, action_id: Any) -> Action:
        """An action this run proposed, as it is now: `self.run.actions.get(pk=action_id)`,
        as one prepared statement on PostgreSQL (a step that waits on an action reads it at
        every resume). Raises Action.DoesNotExist if this run proposed no such action."""
        if not hotsql.enabled():
            return self.run.actions.get(pk=action_id)
        rows = hotsql.rows(_READ_ACTION, [uuid.UUID(str(action_id)), self.run.pk])
        if not rows:
            raise Action.DoesNotExist(f"run {self.run.pk} proposed no action {action_id}")
        action = action_with_effect(rows[0])
        recorded = rows[0][-1]
        if self.locked:
            ledger = None if recorded is None else dict(hotsql.loads(recorded))
            action.__dict__[LEDGER_READ] = ledger
        action._state.fields_cache["run"] = self.run
        self.read[str(action.pk)] = action
        return action

    def output_of(self, step_name: str) -> dict[str, Any]:
        outputs = self.state.workspace.get("outputs", {})
        value = outputs.get(step_name) if isinstance(outputs, dict) else None
        return value if isinstance(value, dict) else {}

    def effect(self, name: str, apply: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Apply an external effect at most once per (run, step, name), whatever the attempt.

        `apply` gets the idempotency key to hand to the external system. The ledger row commits
        with the step; a redelivered or retried step finds it and does nothing.
        """
        key = f"{self.run.pk}:{self.step.name}:{name}"
        if not self.run.durable:
            return apply(key)
        recorded = Effect.objects.filter(key=key).values_list("result", flat=True).first()
        if recorded is not None:
            log.info("effect %s already recorded; not applied again", key)
            self.trace(TraceKind.SKIPPED, f"effect {name} already applied; not applied again")
            return dict(recorded)
        return record_effect(
            key=key, result=apply(key), run=self.run, step_name=self.step.name, fenced=False
        )
