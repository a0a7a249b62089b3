"""Workflows that exist only for tests. Loaded through WORKFLOW_MODULES in test settings, so
the worker process knows them too."""

from workflows.engine import StepContext
from workflows.specs import StepResult, StepSpec, WorkflowSpec, register


def _always_crashes(ctx: StepContext) -> StepResult:
    raise RuntimeError("the tool is down")


CRASHING = register(
    WorkflowSpec(
        name="always_crashes",
        version=1,
        title="Crashes",
        agent="triage-agent",
        steps=(StepSpec("boom", "Always raises", _always_crashes, max_attempts=2),),
    )
)
