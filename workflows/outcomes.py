"""How a finished run ended: succeeded only when its objective was met.

Every step done is not the same as the objective met: a rejected customer reply handed to a
person, or rounds of answers that never led to an approved reply, end the run `handed_off`;
what could not be done at all ends it `failed`. The workflow declares the judgement
(`WorkflowSpec.outcome`, from the steps' outputs); the engine only asks it.
"""

from __future__ import annotations

from typing import Any

from .models import RunStatus, StepRun, WorkflowRun
from .specs import UnknownWorkflow, get_spec

_STATUSES = {
    "succeeded": RunStatus.SUCCEEDED,
    "handed_off": RunStatus.HANDED_OFF,
    "failed": RunStatus.FAILED,
}


def run_outcome(
    run: WorkflowRun, unwritten: dict[str, dict[str, Any]] | None = None
) -> tuple[RunStatus, str]:
    """Precondition: every step of `run` is done (its last output written, or in
    `unwritten`: outputs by step name this transaction writes later). One query, and only
    for a workflow that declares an outcome."""
    try:
        spec = get_spec(run.workflow, run.workflow_version)
    except UnknownWorkflow:
        return RunStatus.SUCCEEDED, ""
    if spec.outcome is None:
        return RunStatus.SUCCEEDED, ""
    outputs: dict[str, dict[str, Any]] = {
        name: output if isinstance(output, dict) else {}
        for name, output in StepRun.objects.filter(run=run).values_list("name", "output")
    }
    outputs |= unwritten or {}
    status, reason = spec.outcome(outputs)
    if status not in _STATUSES:
        raise ValueError(f"{spec.name}: outcome {status!r} is not one of {sorted(_STATUSES)}")
    return _STATUSES[status], reason
