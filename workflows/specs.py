"""How a workflow is declared: a versioned spec of named steps forming a DAG, in a code registry.

A spec lists step *templates*. When a run starts, the spec's planner turns them into the run's
plan — the concrete DAG for this run (a planner may fan one template out into one step per
item, e.g. one scan per publication) — and the plan is stored on the run before any step
executes. Each planned step has a mode: `sync` steps are the critical path and run inline, one
at a time, in plan order; `async` steps (gathering, verification) fan out as parallel Celery
tasks, and whatever depends on them waits until they have all joined.

A step whose body calls a model (seconds, where the engine's own work per step is a
millisecond) says so: `calls_model=True`. Wherever a model server is configured
(settings.MODEL_STEPS_ALONE) it is never run inline by a coordinator, which may be draining a
batch of runs whose commits would all wait on it; it is sent as a task of its own to the model
queue (`<queue>-model`, served by a pool of its own in scale-out mode) and runs there as an
async step does. A sync one keeps its place on the critical path: no other sync step of the
run goes while it is queued or running. (With the offline model, microseconds, it runs inline.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

if TYPE_CHECKING:
    from .engine import StepContext


class Mode:
    SYNC = "sync"
    ASYNC = "async"
    ALL = (SYNC, ASYNC)


@dataclass(frozen=True)
class Wait:
    """Returned by a step that cannot finish until a person decides something, or an outside
    event arrives, or a time comes — whichever is first.

    `actions`: the ids of the escalated actions it waits on; the engine resumes the step only
    once none of them is still with a person (or in its undo window), or, with `each`, as
    soon as any one of them is settled (the step acts on it and waits again for the rest).
    `events`: kinds of outside events (workflows.run_events) that wake it. `until`: its
    deadline (a database timer, like Sleep's). All empty: any nudge resumes it.
    """

    reason: str
    actions: tuple[str, ...] = ()
    each: bool = False
    events: tuple[str, ...] = ()
    until: datetime | None = None

    def waiting_for(self) -> dict[str, Any]:
        """What the engine stores on the step (StepRun.waiting_for)."""
        out: dict[str, Any] = {"actions": list(self.actions)}
        if self.each:
            out["each"] = True
        if self.events:
            out["events"] = list(self.events)
        if self.until is not None:
            out["until"] = self.until.isoformat()
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Sleep:
    """Returned by a step that asks to be woken later ("check in 6 hours").

    The time is stored in the database (`WorkflowRun.wake_at`) and scanned by beat; nothing
    sits in the broker for hours. On waking the step runs again with `ctx.woken` set.
    """

    until: datetime
    reason: str

    @classmethod
    def after(cls, seconds: float, reason: str) -> Sleep:
        from django.utils import timezone

        return cls(until=timezone.now() + timedelta(seconds=seconds), reason=reason)


StepResult = dict[str, Any] | Wait | Sleep
# A success criterion looks at a step's output and returns why it is not good enough, or None.
Criterion = Callable[[dict[str, Any]], str | None]


@dataclass(frozen=True)
class Retry:
    """Attempts (the first one included) and exponential backoff between them."""

    max_attempts: int = 3
    backoff_seconds: float = 1.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 300.0

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based)."""
        delay = self.backoff_seconds * self.backoff_factor ** max(attempt - 1, 0)
        return float(min(delay, self.max_backoff_seconds))


_PREVIOUS = "__previous__"


@dataclass(frozen=True)
class StepSpec:
    """A step template. `depends_on=None` means "the step declared just before this one"
    (so a plain list of steps is a chain); `()` makes it a root."""

    name: str
    description: str
    run: Callable[[StepContext], StepResult]
    depends_on: tuple[str, ...] | None = None
    mode: str = Mode.SYNC
    retry: Retry = field(default_factory=Retry)
    timeout_seconds: float = 120.0
    success: Criterion | None = None
    success_description: str = ""
    # Its body calls a model (or anything else that takes seconds): run alone, in the model
    # pool, never inline in a coordinator's batch (see the module's docstring).
    calls_model: bool = False

    def __post_init__(self) -> None:
        if self.mode not in Mode.ALL:
            raise ValueError(f"step {self.name}: mode must be one of {Mode.ALL}")
        if self.retry.max_attempts < 1:
            raise ValueError(f"step {self.name}: max_attempts must be at least 1")
        if self.timeout_seconds <= 0:
            raise ValueError(f"step {self.name}: timeout must be positive")
        if not self.name or ":" in self.name or len(self.name) > 60:
            raise ValueError(f"step name {self.name!r}: 1-60 characters, no ':'")

    def planned(
        self,
        *,
        name: str | None = None,
        depends_on: Sequence[str] = (),
        params: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> PlannedStep:
        return PlannedStep(
            name=name or self.name,
            template=self.name,
            description=description or self.description,
            mode=self.mode,
            depends_on=tuple(depends_on),
            max_attempts=self.retry.max_attempts,
            timeout_seconds=self.timeout_seconds,
            params=dict(params or {}),
            success=self.success_description,
            calls_model=self.calls_model,
        )


@dataclass(frozen=True)
class PlannedStep:
    """One node of a run's plan: a template instantiated, with its edges, as stored on the run."""

    name: str
    template: str
    description: str
    mode: str
    depends_on: tuple[str, ...]
    max_attempts: int
    timeout_seconds: float
    params: dict[str, Any]
    success: str = ""
    calls_model: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "template": self.template,
            "description": self.description,
            "mode": self.mode,
            "depends_on": list(self.depends_on),
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "params": self.params,
            "success": self.success,
        }
        # Only where set: the plans (and plan digests) of workflows without model steps are
        # the same as before, and the engine reads a missing key as False.
        if self.calls_model:
            out["calls_model"] = True
        return out


# A planner decides the DAG for one run from its input; it must be deterministic and quick
# (no model calls), because the plan is stored in the transaction that creates the run.
Planner = Callable[["WorkflowSpec", dict[str, Any]], list[PlannedStep]]


# Given every step's output by step name: ("succeeded" | "handed_off" | "failed", reason).
Outcome = Callable[[dict[str, dict[str, Any]]], tuple[str, str]]


class InvalidPlan(ValueError):
    pass


class InvalidInput(ValueError):
    """The run's input cannot be planned; the run is not created.

    `errors`: what is wrong, field by field, in the API's 422 shape (`loc` inside the input).
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [{"loc": [], "msg": message, "type": "value_error"}]


class AnyObject(BaseModel):
    """The input schema of a workflow that declares none: any JSON object."""

    model_config = ConfigDict(extra="allow")


def check_input(model: type[BaseModel], input: Any) -> None:
    """Raise InvalidInput, naming every bad field, unless `input` fits the declared schema."""
    if not isinstance(input, dict):
        raise InvalidInput("a run's input must be a JSON object")
    try:
        model.model_validate(input, strict=False)
    except PydanticValidationError as exc:
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        summary = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'input'}: {e['msg']}" for e in errors
        )
        raise InvalidInput(
            f"the input does not fit the workflow's schema: {summary}", errors
        ) from None


def check_dag(steps: Sequence[PlannedStep]) -> list[PlannedStep]:
    """Refuse duplicate names, unknown dependencies and cycles; return the steps in a
    topological order that keeps declaration order where the edges allow it."""
    names = [s.name for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidPlan(f"duplicate step names: {', '.join(dupes)}")
    known = set(names)
    for s in steps:
        unknown = [d for d in s.depends_on if d not in known]
        if unknown:
            raise InvalidPlan(f"step {s.name} depends on unknown {', '.join(unknown)}")
        if s.name in s.depends_on:
            raise InvalidPlan(f"step {s.name} depends on itself")
    ordered: list[PlannedStep] = []
    done: set[str] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if set(s.depends_on) <= done]
        if not ready:
            raise InvalidPlan("the steps form a cycle: " + ", ".join(s.name for s in remaining))
        ordered.append(ready[0])
        done.add(ready[0].name)
        remaining.remove(ready[0])
    return ordered


def default_planner(spec: WorkflowSpec, input: dict[str, Any]) -> list[PlannedStep]:
    planned: list[PlannedStep] = []
    previous: str | None = None
    for step in spec.steps:
        deps = step.depends_on if step.depends_on is not None else (previous,) if previous else ()
        planned.append(step.planned(depends_on=deps))
        previous = step.name
    return planned


def empty_initial_state(input: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"conversation": {}, "workspace": {"outputs": {}}, "systemic": {}}


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    version: int
    title: str
    agent: str  # the AgentProfile name runs of this workflow act as
    steps: tuple[StepSpec, ...]
    planner: Planner = default_planner
    # The state a run starts from (version 1): e.g. the conversation's intent and messages.
    initial_state: Callable[[dict[str, Any]], dict[str, dict[str, Any]]] = field(
        default=lambda input: empty_initial_state(input)
    )
    # The whole run must finish within this (waiting for people included); None: no limit.
    timeout_seconds: float | None = None
    # False only for benchmarks: the same engine with a no-op store (no snapshots, no ledger).
    durable: bool = True
    # The steps whose outputs an escalation's summary reads: each may say what the agent was
    # unsure about (`uncertain_about`), which the reviewer is told first.
    summary_outputs: tuple[str, ...] = ()
    # What a run's input must look like (a pydantic model; its JSON schema is published with
    # the API). Checked before anything is created: a bad input is refused, never dead-letters.
    input_schema: type[BaseModel] = AnyObject
    # How a run whose every step is done ended, from the steps' outputs: (status, reason).
    # A run "succeeded" only when its objective was met; None: finishing all steps meets it.
    outcome: Outcome | None = None
    # How many times the agent may revise a proposal a person answered (Respond) before the
    # action type's fallback runs instead.
    max_revision_rounds: int = 2

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise InvalidPlan(f"workflow {self.name}: duplicate step templates")
        if self.planner is default_planner:
            check_dag(default_planner(self, {}))

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def make_plan(self, input: dict[str, Any], *, force_sync: bool = False) -> list[PlannedStep]:
        """The DAG for one run. `force_sync` runs every step inline (no fan-out, no model
        pool): the same workflow on one worker, e.g. to debug it or where parallel workers are
        not wanted."""
        plan = check_dag(self.planner(self, input))
        for p in plan:
            self.step(p.template)  # a planner may only instantiate declared templates
        if force_sync:
            plan = [replace(p, mode=Mode.SYNC, calls_model=False) for p in plan]
        return plan


def digest(value: Any) -> str:
    """A stable hash of JSON-able data: what recovery compares to detect a change."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class UnknownWorkflow(LookupError):
    pass


_REGISTRY: dict[tuple[str, int], WorkflowSpec] = {}


def register(spec: WorkflowSpec) -> WorkflowSpec:
    key = (spec.name, spec.version)
    if key in _REGISTRY and _REGISTRY[key] is not spec:
        raise ValueError(f"workflow {spec.name} v{spec.version} is registered twice")
    _REGISTRY[key] = spec
    return spec


def get_spec(name: str, version: int | None = None) -> WorkflowSpec:
    if version is None:
        versions = [v for (n, v) in _REGISTRY if n == name]
        if not versions:
            raise UnknownWorkflow(f"no workflow named {name!r}")
        version = max(versions)
    try:
        return _REGISTRY[(name, version)]
    except KeyError:
        raise UnknownWorkflow(f"no workflow {name!r} v{version}") from None


def all_specs() -> list[WorkflowSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: (s.name, s.version))
