"""The verification layer, declared per step in the workflow spec.

A step wrapped with `verified(fn, Verification(...))` has its output checked by each Check:
schema checks, deterministic rules, an optional model judge. On failure it either retries the
step with the problems fed back (bounded), or forces human review with the problems as
reasons. It never silently passes: a retry budget that runs out also forces review.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .agents import call_for_step
from .models import TraceKind
from .schemas import Judgement
from .specs import StepResult, Wait

if TYPE_CHECKING:
    from .engine import StepContext

CheckFn = Callable[["StepContext", dict[str, Any]], list[str]]

# Problems found by the previous attempt, for the step to feed back to the model.
_feedback: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("feedback", default=())


def feedback() -> list[str]:
    return list(_feedback.get())


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]
    on_fail: Literal["retry", "review"] = "retry"
    max_retries: int = 2


def rule(name: str, predicate: Callable[[dict[str, Any]], str | None]) -> Check:
    """A deterministic rule: `predicate` returns a problem, or None when the output is fine."""

    def run(ctx: StepContext, output: dict[str, Any]) -> list[str]:
        problem = predicate(output)
        return [f"{name}: {problem}"] if problem else []

    return Check(name, run)


def model_judge(
    prompt_name: str, variables: Callable[[StepContext, dict[str, Any]], dict[str, Any]]
) -> Check:
    """A second model call that judges the output with its own prompt."""

    def run(ctx: StepContext, output: dict[str, Any]) -> list[str]:
        judgement, _ = call_for_step(ctx, prompt_name, variables(ctx, output), Judgement)
        if judgement.ok:
            return []
        return [f"judge: {p}" for p in judgement.problems] or ["judge: not ok (no reason given)"]

    return Check(f"judge {prompt_name}", run)


def verified(
    step: Callable[[StepContext], StepResult], verification: Verification
) -> Callable[[StepContext], StepResult]:
    def run(ctx: StepContext) -> StepResult:
        problems: list[str] = []
        output: dict[str, Any] = {}
        for attempt in range(1, verification.max_retries + 2):
            token = _feedback.set(tuple(problems))
            try:
                result = step(ctx)
            finally:
                _feedback.reset(token)
            if isinstance(result, Wait) or not isinstance(result, dict):
                return result
            output = result
            problems = [p for check in verification.checks for p in check.run(ctx, output)]
            if not problems:
                ctx.trace(TraceKind.DECIDED, f"verification passed (attempt {attempt})")
                return {**output, "verification": {"passed": True, "attempts": attempt}}
            ctx.trace(
                TraceKind.ERROR, f"verification failed (attempt {attempt}): " + "; ".join(problems)
            )
            if verification.on_fail == "review":
                break
        return {
            **output,
            "verification": {"passed": False, "problems": problems, "forces_review": True},
        }

    run.__name__ = getattr(step, "__name__", "verified_step")
    run.__doc__ = step.__doc__
    return run


def review_reasons(output: dict[str, Any]) -> list[str]:
    """The reasons a failed verification adds to the actions built from this output."""
    v = output.get("verification") or {}
    if v.get("passed", True):
        return []
    return [f"verification failed: {p}" for p in v.get("problems", [])]
