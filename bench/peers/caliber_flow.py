"""Caliber's side of the peer workload: the same three nodes as the LangGraph graph.

propose -> gate -> execute. `propose` records the action and holds it against policy (an
escalation opens when policy says review); `gate` waits, durably, while a person has it;
`execute` applies the effect once (ledger) and finishes. Loaded into the bench process and the
workers through WORKFLOW_MODULES, so the registry and the action type exist on both sides.
"""

from __future__ import annotations

from typing import Any

from workflows.actions import execute_action, propose_action
from workflows.engine import StepContext
from workflows.models import ActionStatus
from workflows.specs import StepResult, StepSpec, Wait, WorkflowSpec, register
from workflows.tools import ACTION_TYPES, ActionType

ACTION_TYPE = "peer_effect"
APPROVAL = "peer_approval"
AUTO = "peer_auto"


def _effect(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {"done": payload["item"], "key": key}


ACTION_TYPES.setdefault(
    ACTION_TYPE,
    ActionType(
        name=ACTION_TYPE,
        label="Benchmark effect (the peer comparison's one action)",
        reversible=True,
        customer_facing=False,
        required_fields=("item",),
        execute=_effect,
    ),
)


def propose(ctx: StepContext) -> StepResult:
    action = propose_action(
        run=ctx.run,
        step_name=ctx.step.name,
        action_type=ACTION_TYPE,
        payload={"item": ctx.run.input["item"]},
        confidence=0.9,
        rationale="peer benchmark",
    )
    return {"action": str(action.pk), "status": action.status}


def gate(ctx: StepContext) -> StepResult:
    action_id = ctx.output_of("propose")["action"]
    status = ctx.action(action_id).status
    if status == ActionStatus.ESCALATED:
        return Wait("awaiting approval", actions=(action_id,))
    return {"status": status}


def execute(ctx: StepContext) -> StepResult:
    # The action's run is this one, not loaded again.
    action = ctx.action(ctx.output_of("propose")["action"])
    if action.status in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
        action = execute_action(action=action)
    return {"status": action.status, "result": action.result}


def _spec(name: str, title: str) -> WorkflowSpec:
    return register(
        WorkflowSpec(
            name=name,
            version=1,
            title=title,
            agent="triage-agent",
            steps=(
                StepSpec("propose", "Propose the action; policy decides", propose),
                StepSpec("gate", "Wait while a person has it", gate),
                StepSpec("execute", "Apply the effect once", execute),
            ),
        )
    )


PEER_APPROVAL = _spec(APPROVAL, "Peer benchmark: propose, approve, execute")
PEER_AUTO = _spec(AUTO, "Peer benchmark: propose, execute")
