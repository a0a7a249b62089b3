"""How a workflow is declared: a versioned spec of named steps, kept in a code registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import StepContext


@dataclass(frozen=True)
class Wait:
    """Returned by a step that cannot finish until something outside the run happens."""

    reason: str


StepResult = dict[str, Any] | Wait


@dataclass(frozen=True)
class StepSpec:
    name: str
    description: str
    run: Callable[[StepContext], StepResult]
    max_attempts: int = 3


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    version: int
    title: str
    agent: str  # the AgentProfile name runs of this workflow act as
    steps: tuple[StepSpec, ...]

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


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
