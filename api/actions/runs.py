"""Runs started through the API: once per idempotency key, with input the workflow accepts."""

from __future__ import annotations

from typing import Any

from escalations.models import AgentProfile
from workflows.actions import start_run
from workflows.models import WorkflowRun

from ..models import ApiToken


class RunKeyConflict(Exception):
    """The agent reused a run's idempotency key for another workflow or input."""

    def __init__(self, existing: WorkflowRun) -> None:
        self.existing = existing
        super().__init__(
            f"idempotency key already used for run {existing.pk} with a different workflow or "
            "input; use a new key for a new run"
        )


def _run_key(agent: AgentProfile, client_key: str) -> str:
    # WorkflowRun.idempotency_key is shared with follow-ups and commands: keep agents apart.
    return f"api-run:{agent.pk}:{client_key}"


def _same_run(key: str, workflow: str, input: dict[str, Any]) -> WorkflowRun | None:
    run = WorkflowRun.objects.filter(idempotency_key=key).first()
    if run is not None and (run.workflow != workflow or run.input != input):
        raise RunKeyConflict(run)
    return run


def start_run_for_token(
    *, token: ApiToken, workflow: str, input: dict[str, Any], idempotency_key: str | None
) -> tuple[WorkflowRun, bool]:
    """Start a run for the token's agent; (run, created).

    With a key, the same key and body return the first run (a retry after a lost answer
    starts nothing), and the same key with another workflow or input raises RunKeyConflict.
    Raises workflows' InvalidInput (nothing created) for input that does not fit the schema.
    """
    if not idempotency_key:
        return start_run(workflow=workflow, input=input), True
    key = _run_key(token.agent, idempotency_key)
    existing = _same_run(key, workflow, input)
    if existing is not None:
        return existing, False
    run = start_run(workflow=workflow, input=input, idempotency_key=key)
    # Two identical requests at once: the unique key lets one insert win and start_run hands
    # the other the winner's run (both answer 201 with the same run; still one run).
    if run.workflow != workflow or run.input != input:
        raise RunKeyConflict(run)
    return run, True
