"""How agent steps talk to the model: pinned prompt, structured output, bounded repair.

Nothing the model says acts until it validated: the schema (extra fields refused), then the
step's own checks (declared action types, payload fields, counts). Invalid output is fed back
for a bounded number of repairs; after that the step fails and the run needs attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .llm import ModelClient, ModelError, ModelOutputError, ModelResult, RenderedPrompt
from .models import TraceKind, WorkflowRun
from .prompts.actions import model_call, render, version_for_run
from .prompts.models import ModelCall
from .schemas import ModelOutput

if TYPE_CHECKING:
    from .engine import StepContext

MAX_REPAIRS = 2
STORED_RAW_CHARS = 2000


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "output"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Attempt:
    """One call to the model as a ModelCall row records it (prompts.actions), not yet written."""

    model: str
    ok: bool
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 1
    mean_logprob: float | None = None


def ask_model[T: ModelOutput](
    *,
    model: ModelClient,
    prompt: RenderedPrompt,
    schema: type[T],
    on_attempt: Callable[[Attempt], None],
    check: Callable[[T], list[str]] | None = None,
    on_rejected: Callable[[int, str, str], None] | None = None,
    max_repairs: int = MAX_REPAIRS,
) -> tuple[T, ModelResult]:
    """Ask for `schema`; repair invalid answers up to `max_repairs` times, then raise.

    No database: each call's record goes to `on_attempt` as the call ends (call_model writes
    it at once; a batch of summaries gathers them and writes them together), and each
    rejected answer to `on_rejected(attempt, problems, raw)`. So it may run in a thread of
    its own, several at once, as long as `model` may (the OpenAI client may)."""
    extra: list[dict[str, str]] = []
    problems = ""
    for attempt in range(1, max_repairs + 2):
        raw = ""
        try:
            result = model.generate(prompt=prompt, schema=schema, extra_messages=extra)
            raw = result.raw
            parsed = schema.model_validate(result.data)
            issues = check(parsed) if check is not None else []
            if issues:
                raise ModelOutputError("; ".join(issues), raw)
        except ModelError as exc:
            on_attempt(Attempt(model=model.name, ok=False, error=str(exc)))
            raise
        except (ModelOutputError, ValidationError) as exc:
            problems = _explain(exc) if isinstance(exc, ValidationError) else str(exc)
            raw = raw or getattr(exc, "raw", "")
            on_attempt(Attempt(model=model.name, ok=False, error=problems))
            if on_rejected is not None:
                on_rejected(attempt, problems, raw)
            extra = [
                {"role": "assistant", "content": raw[:STORED_RAW_CHARS]},
                {
                    "role": "user",
                    "content": f"That answer was rejected: {problems}. Answer again with only "
                    "JSON that matches the schema exactly.",
                },
            ]
            continue
        on_attempt(
            Attempt(
                model=result.model,
                ok=True,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                latency_ms=result.latency_ms,
                attempts=result.attempts,
                mean_logprob=result.mean_logprob,
            )
        )
        return parsed, result
    raise ModelOutputError(
        f"{prompt.name}: no valid answer after {max_repairs + 1} attempts ({problems}); "
        "the step needs attention"
    )


def call_model[T: ModelOutput](
    *,
    model: ModelClient,
    run: WorkflowRun | None,
    step_name: str,
    prompt_name: str,
    variables: dict[str, Any],
    schema: type[T],
    check: Callable[[T], list[str]] | None = None,
    trace: Callable[..., None] | None = None,
    max_repairs: int = MAX_REPAIRS,
) -> tuple[T, ModelResult]:
    """ask_model with the run's pinned prompt, each call recorded as it ends and traced."""
    prompt = render(version_for_run(run, prompt_name), variables)
    calls: list[ModelCall] = []

    def record(attempt: Attempt) -> None:
        call = model_call(run=run, step_name=step_name, prompt=prompt, **asdict(attempt))
        call.save(force_insert=True)
        calls.append(call)

    def rejected(attempt: int, problems: str, raw: str) -> None:
        if trace is not None:
            trace(
                TraceKind.ERROR,
                f"model output for {prompt_name} rejected (attempt {attempt}): {problems}",
                raw=raw[:STORED_RAW_CHARS],
                truncated=len(raw) > STORED_RAW_CHARS,
            )

    parsed, result = ask_model(
        model=model,
        prompt=prompt,
        schema=schema,
        on_attempt=record,
        check=check,
        on_rejected=rejected,
        max_repairs=max_repairs,
    )
    if trace is not None:
        call = calls[-1]
        cost = f"${call.cost_usd}" if call.cost_usd is not None else "cost unknown"
        trace(
            TraceKind.DECIDED,
            f"model {result.model} answered {prompt_name} v{prompt.version}: "
            f"{result.input_tokens}+{result.output_tokens} tokens, {cost}, "
            f"{result.latency_ms:.0f} ms",
            model_call={
                "id": call.pk,
                "prompt": prompt_name,
                "version": prompt.version,
                "model": result.model,
                "input_tokens": result.input_tokens,
                "output_tokens": result.output_tokens,
                "cost_usd": str(call.cost_usd) if call.cost_usd is not None else None,
                "latency_ms": round(result.latency_ms, 1),
                "attempts": result.attempts,
                "mean_logprob": result.mean_logprob,
                "notes": result.notes,
            },
            parsed=parsed.model_dump(),
        )
    return parsed, result


def call_for_step[T: ModelOutput](
    ctx: StepContext,
    prompt_name: str,
    variables: dict[str, Any],
    schema: type[T],
    check: Callable[[T], list[str]] | None = None,
) -> tuple[T, ModelResult]:
    return call_model(
        model=ctx.model,
        run=ctx.run,
        step_name=ctx.step.name,
        prompt_name=prompt_name,
        variables=variables,
        schema=schema,
        check=check,
        trace=ctx.trace,
    )
