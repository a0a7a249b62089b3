"""The pre-summarised context a reviewer reads first, in the queue, the page and Slack.

An escalation is created with the template summary, at once: a model call never stands
inside a transaction (with a real model a slow reply would hold the run's locks for
minutes). It is created wanting the model's (`Escalation.summary_wanted_at`), and after
commit wakes the summary writer (escalations.actions.summaries), which asks the model
(prompt `escalation.summary`, pinned per run like every prompt; the offline model fills a
deterministic template) for every summary waiting, writes them and pushes them live. If the
model fails, the template stays and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from workflows.agents import Attempt, ask_model
from workflows.llm import ModelClient, ModelError, ModelOutputError, RenderedPrompt
from workflows.models import Action, WorkflowRun
from workflows.schemas import Summary
from workflows.specs import UnknownWorkflow, get_spec
from workflows.tools import get_action_type

log = logging.getLogger(__name__)

# Ends the summary an escalation is created with, until the model's replaces it.
PENDING_NOTE = " (Template summary: the model's is being written.)"
UNAVAILABLE_NOTE = " (Template summary: the model was unavailable.)"
PROMPT = "escalation.summary"
# One repair of an invalid answer, then the template: a reviewer is better served by the
# template now than by a third wait on the model.
MAX_REPAIRS = 1


def _declared_outputs(run: WorkflowRun | None) -> dict[str, Any]:
    """The outputs of the steps the run's workflow declares for summaries (its
    `summary_outputs`), from the run's state (the engine keeps each committed step's output
    under workspace.outputs): the run in hand already holds it, so no query."""
    if run is None:
        return {}
    try:
        declared = get_spec(run.workflow, run.workflow_version).summary_outputs
    except UnknownWorkflow:
        return {}
    state = run.state if isinstance(run.state, dict) else {}
    workspace = state.get("workspace")
    outputs = workspace.get("outputs") if isinstance(workspace, dict) else None
    if not isinstance(outputs, dict):
        return {}
    return {name: outputs[name] for name in declared if isinstance(outputs.get(name), dict)}


def facts(action: Action, reasons: list[str]) -> dict[str, str]:
    tool = get_action_type(action.action_type)
    run = action.run
    unsure = [str(out.get("uncertain_about") or "") for out in _declared_outputs(run).values()]
    stakes = [
        "reversible" if tool.reversible else "irreversible",
        "customer-facing" if tool.customer_facing else "internal",
    ]
    if tool.amount_field and tool.amount_field in action.payload:
        stakes.append(f"amount {action.payload[tool.amount_field]}")
    return {
        "agent": action.agent.name,
        "doing": f"“{run.title}” ({run.workflow})" if run is not None else "a request sent via API",
        "proposal": tool.label.lower(),
        "confidence": f"{action.confidence:.2f}",
        "reasons": "; ".join(reasons) or "policy requires review",
        "stakes": ", ".join(stakes),
        "unsure": "; ".join(u for u in unsure if u) or "nothing it reported",
    }


def template_summary(facts: dict[str, str]) -> str:
    return (
        f"{facts['agent']} was working on {facts['doing']}. It proposes to {facts['proposal']} "
        f"(confidence {facts['confidence']}). It needs a person because {facts['reasons']}. "
        f"At stake: {facts['stakes']}. Unsure about: {facts['unsure']}."
    )


def first_summary(action: Action, reasons: list[str]) -> str:
    """What an escalation is created with: the template, no model call."""
    return template_summary(facts(action, reasons)) + PENDING_NOTE


def ask_summary(
    model: ModelClient,
    prompt: RenderedPrompt,
    known: dict[str, str],
    on_attempt: Callable[[Attempt], None],
    *,
    about: object,
) -> str:
    """The model's summary, or the template saying the model was unavailable. No database
    (each call goes to `on_attempt`, to be recorded): the writer runs several in threads."""
    try:
        out, _ = ask_model(
            model=model,
            prompt=prompt,
            schema=Summary,
            on_attempt=on_attempt,
            max_repairs=MAX_REPAIRS,
        )
        return out.summary
    except (ModelError, ModelOutputError) as exc:
        log.warning("summary of %s fell back to the template: %s", about, exc)
        return unavailable(known)


def unavailable(known: dict[str, str]) -> str:
    return template_summary(known) + UNAVAILABLE_NOTE
