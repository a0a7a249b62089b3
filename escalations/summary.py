"""The pre-summarised context a reviewer reads first, in the queue, the page and Slack.

Written by the model (prompt `escalation.summary`, pinned per run like every prompt; the
offline model fills a deterministic template). A summary must never stand between an agent
and its reviewer: if the model fails, a template summary is stored and says so.
"""

from __future__ import annotations

import logging
from typing import Any

from workflows.models import Action, WorkflowRun
from workflows.tools import get_action_type

log = logging.getLogger(__name__)


def _step_outputs(run: WorkflowRun | None) -> dict[str, Any]:
    """Each committed step's output, from the run's state (the engine keeps them under
    workspace.outputs): the run in hand already holds it, so no query."""
    if run is None:
        return {}
    state = run.state if isinstance(run.state, dict) else {}
    workspace = state.get("workspace")
    outputs = workspace.get("outputs") if isinstance(workspace, dict) else None
    if not isinstance(outputs, dict):
        return {}
    return {name: out for name, out in outputs.items() if isinstance(out, dict)}


def _facts(action: Action, reasons: list[str]) -> dict[str, str]:
    tool = get_action_type(action.action_type)
    run = action.run
    outputs = _step_outputs(run)
    unsure = [
        str(outputs[step].get("uncertain_about") or "")
        for step in ("classify", "draft_reply")
        if isinstance(outputs.get(step), dict)
    ]
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


def summarise(action: Action, reasons: list[str]) -> str:
    from workflows.agents import call_model
    from workflows.llm import ModelError, ModelOutputError, get_model
    from workflows.prompts.actions import PromptError
    from workflows.schemas import Summary

    facts = _facts(action, reasons)
    try:
        out, _ = call_model(
            model=get_model(),
            run=action.run,
            step_name=action.step_name,
            prompt_name="escalation.summary",
            variables=facts,
            schema=Summary,
            max_repairs=1,
        )
        return out.summary
    except (ModelError, ModelOutputError, PromptError) as exc:
        log.warning("summary for action %s fell back to the template: %s", action.pk, exc)
        return template_summary(facts) + " (Template summary: the model was unavailable.)"
