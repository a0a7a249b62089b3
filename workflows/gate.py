"""The one interface through which the layer above gates what agents do.

The engine knows nothing of policies or escalations: it asks the registered gate whether an
action may run alone, hands it the actions that need a person, and tells it when a run is
cancelled. `escalations` registers its gate at app start (EscalationsConfig.ready); with
none registered, asking raises, so a misconfigured deployment fails loudly, not open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from .models import PolicyOutcome

if TYPE_CHECKING:
    from django.db.models import Q

    from .models import Action, WorkflowRun


@dataclass(frozen=True)
class Guard:
    """A condition (SQL, constant text, and its parameters) under which a verdict reached
    from the gate's cache is still the gate's answer: the action is written with it in the
    same statement, and where it no longer holds nothing is written and the gate is asked
    again with `fresh=True`. Saves the freshness check its own round trip."""

    sql: str
    params: tuple[Any, ...]


class Verdict(Protocol):
    """What the gate says of one proposed action."""

    @property
    def outcome(self) -> PolicyOutcome: ...
    @property
    def reasons(self) -> list[str]: ...
    @property
    def policy_id(self) -> int | None: ...
    @property
    def policy_version(self) -> int | None: ...
    @property
    def team_id(self) -> int: ...

    @property
    def guard(self) -> Guard | None:
        """None: the verdict is current as it stands."""
        ...


@dataclass(frozen=True)
class FixedVerdict:
    """A verdict the engine reaches itself (recovery needs a person), not the policies."""

    outcome: PolicyOutcome
    reasons: list[str]
    team_id: int
    policy_id: int | None = None
    policy_version: int | None = None
    guard: Guard | None = None


class ActionGate(Protocol):
    def evaluate(
        self,
        *,
        agent: Any,
        workflow: str,
        action_type: str,
        confidence: float,
        payload: dict[str, Any],
        declared_irreversible: bool = False,
        fresh: bool = True,
    ) -> Verdict:
        """May this action run alone? `declared_irreversible`: the agent said so itself (it
        can only make the verdict stricter). `fresh=False`: the caller writes the action
        under the verdict's `guard`, so the gate may answer from its cache unchecked."""
        ...

    def escalate(self, *, action: Action, team_id: int) -> None:
        """Put an action whose verdict is REVIEW in front of people. Inside its transaction."""
        ...

    def draw_audit(self, *, verdict: Verdict) -> tuple[float | None, bool]:
        """For an action about to be written with `verdict`: its chance of being sampled for
        a person to judge although it may act alone, and whether it was."""
        ...

    def audit(self, *, action: Action, team_id: int | None) -> None:
        """A sampled action: held for its audit before it runs (irreversible, `team_id`
        given, inside its transaction) or audited after it ran (`team_id` None)."""
        ...

    def run_cancelled(self, *, run: WorkflowRun) -> int:
        """The run was cancelled: withdraw what waits on people for it; how many were.
        Precondition: the run's row lock, inside the cancelling transaction."""
        ...

    def awaiting_people(self) -> Q:
        """A filter on WorkflowRun: runs with an action still waiting for a person."""
        ...


_gate: ActionGate | None = None


def register(gate: ActionGate) -> None:
    global _gate
    _gate = gate


def gate() -> ActionGate:
    if _gate is None:
        raise ImproperlyConfigured(
            "no action gate registered: add 'escalations' to INSTALLED_APPS (it registers one "
            "at start)"
        )
    return _gate
