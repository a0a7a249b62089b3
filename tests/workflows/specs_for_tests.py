"""Workflows that exist only for tests. Loaded through WORKFLOW_MODULES in test settings, so
the worker processes know them too.

Steps read what to do from the run's input, so one spec serves many scenarios: sleep for a
while (to be killed or terminated mid-step), crash until a marker file exists, kill their own
worker, apply an effect through the ledger.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from workflows.engine import StepContext
from workflows.models import TraceEvent
from workflows.specs import Mode, Retry, Sleep, StepResult, StepSpec, WorkflowSpec, register


def _always_crashes(ctx: StepContext) -> StepResult:
    marker = ctx.run.input.get("fixed_marker")
    if marker and Path(marker).exists():
        return {"fixed": True}
    raise RuntimeError("the tool is down")


CRASHING = register(
    WorkflowSpec(
        name="always_crashes",
        version=1,
        title="Crashes",
        agent="triage-agent",
        steps=(
            StepSpec(
                "boom",
                "Always raises",
                _always_crashes,
                retry=Retry(max_attempts=2, backoff_seconds=0.2),
            ),
        ),
    )
)


def _hold(ctx: StepContext, key: str) -> None:
    """Sleep `hold_seconds` on the attempts listed in `hold_attempts` (default: the first),
    so a test can kill or cut off the worker while the step is mid-flight."""
    data = ctx.run.input
    seconds = float(data.get("hold_seconds", 0))
    if (
        seconds
        and ctx.step.attempts in data.get("hold_attempts", [1])
        and key in data.get("hold", [key])
    ):
        # A write first, so the step's transaction is open (and visible) while it holds.
        # Written at once, not through ctx.trace (the engine buffers a step's trace events
        # until it commits).
        TraceEvent.objects.create(
            run=ctx.run, step_name=ctx.step.name, kind="system", message=f"holding for {seconds:g}s"
        )
        time.sleep(seconds)


def _charge(ctx: StepContext, name: str) -> dict[str, Any]:
    return ctx.effect(name, lambda key: {"charged": name, "idempotency_key": key})


def _start(ctx: StepContext) -> StepResult:
    _hold(ctx, "start")
    ctx.state.merge("conversation", {"intent": "exercise the DAG"})
    return {"started": True}


def _gather(ctx: StepContext) -> StepResult:
    _hold(ctx, ctx.step.name)
    if ctx.run.input.get("kill_worker_in") == ctx.step.name:
        os.kill(os.getpid(), signal.SIGKILL)
    effect = _charge(ctx, "gathered")
    ctx.state.append("workspace", "gathered", ctx.step.name)
    return {"item": ctx.step.name, "effect": effect["idempotency_key"]}


def _join(ctx: StepContext) -> StepResult:
    _hold(ctx, "join")
    outputs = [ctx.output_of(n) for n in ("gather_a", "gather_b", "gather_c")]
    joined = sorted(o["item"] for o in outputs if o)
    ctx.trace(ctx_kind("decided"), f"joined {len(joined)} results: {', '.join(joined)}")
    _charge(ctx, "joined")
    return {"joined": joined}


def _finish(ctx: StepContext) -> StepResult:
    _hold(ctx, "finish")
    ctx.state.merge("systemic", {"rate_limits": {"test_api": {"per_minute": 60}}})
    return {"done": True}


def ctx_kind(kind: str) -> Any:
    from workflows.models import TraceKind

    return TraceKind(kind)


def _fan_out_steps(mode: str, timeout: float) -> tuple[StepSpec, ...]:
    retry = Retry(max_attempts=3, backoff_seconds=0.2)
    return (
        StepSpec("start", "Start", _start, depends_on=(), retry=retry, timeout_seconds=timeout),
        *(
            StepSpec(
                name,
                f"Gather {name[-1]}",
                _gather,
                depends_on=("start",),
                mode=mode,
                retry=retry,
                timeout_seconds=timeout,
            )
            for name in ("gather_a", "gather_b", "gather_c")
        ),
        StepSpec(
            "join",
            "Join the three",
            _join,
            depends_on=("gather_a", "gather_b", "gather_c"),
            retry=retry,
            timeout_seconds=timeout,
            success=lambda out: None if len(out.get("joined", [])) == 3 else "missing results",
        ),
        StepSpec("finish", "Finish", _finish, retry=retry, timeout_seconds=timeout),
    )


# The 5-step DAG with 3 parallel async steps: start -> (gather_a | gather_b | gather_c) -> join
# (-> finish). Step timeouts are short so a killed worker's lease expires quickly.
FAN_OUT = register(
    WorkflowSpec(
        name="fan_out",
        version=1,
        title="Fan out and join",
        agent="triage-agent",
        steps=_fan_out_steps(Mode.ASYNC, timeout=5.0),
    )
)


def _kills_its_worker(ctx: StepContext) -> StepResult:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


KILLER = register(
    WorkflowSpec(
        name="kills_its_worker",
        version=1,
        title="Kills its worker every time",
        agent="triage-agent",
        steps=(
            StepSpec(
                "suicide",
                "SIGKILLs the process running it",
                _kills_its_worker,
                retry=Retry(max_attempts=2, backoff_seconds=0.1),
                timeout_seconds=2.0,
            ),
        ),
    )
)


def _too_slow(ctx: StepContext) -> StepResult:
    time.sleep(float(ctx.run.input.get("sleep", 5)))
    return {"finished": True}


SLOW = register(
    WorkflowSpec(
        name="too_slow",
        version=1,
        title="Takes longer than its timeout",
        agent="triage-agent",
        steps=(
            StepSpec(
                "slow",
                "Sleeps past its timeout",
                _too_slow,
                retry=Retry(max_attempts=2, backoff_seconds=0.1),
                timeout_seconds=0.5,
            ),
        ),
        timeout_seconds=60,
    )
)


def _nap(ctx: StepContext) -> StepResult:
    if not ctx.woken:
        return Sleep.after(float(ctx.run.input.get("seconds", 3600)), "nap")
    return {"woke": True}


SLEEPER = register(
    WorkflowSpec(
        name="sleeper",
        version=1,
        title="Sleeps, then wakes",
        agent="triage-agent",
        steps=(
            StepSpec("nap", "Ask to be woken later", _nap),
            StepSpec("after", "After waking", lambda ctx: {"after": True}),
        ),
    )
)


def _nap_for(seconds: float) -> Any:
    def nap(ctx: StepContext) -> StepResult:
        if not ctx.woken:
            return Sleep.after(seconds, f"nap {seconds:.0f} s")
        return {"woke": True}

    return nap


# Two sleeps in one run, side by side: a minute and a day.
TWO_SLEEPS = register(
    WorkflowSpec(
        name="two_sleeps",
        version=1,
        title="Two naps of different lengths",
        agent="triage-agent",
        steps=(
            StepSpec("short_nap", "A minute", _nap_for(60), depends_on=(), mode=Mode.ASYNC),
            StepSpec("long_nap", "A day", _nap_for(86400), depends_on=(), mode=Mode.ASYNC),
        ),
    )
)


def _scribble(ctx: StepContext) -> StepResult:
    # Past the StateView, into the dicts it shows: never a write.
    ctx.state.workspace["scribbled"] = True
    ctx.state.merge("workspace", {"written": True})
    return {"done": True}


SCRIBBLER = register(
    WorkflowSpec(
        name="scribbler",
        version=1,
        title="Writes into the state it was shown",
        agent="triage-agent",
        steps=(
            StepSpec("scribble", "Scribble", _scribble),
            StepSpec(
                "look", "Look", lambda ctx: {"saw_scribble": "scribbled" in ctx.state.workspace}
            ),
        ),
    )
)


def _bad_secret(ctx: StepContext) -> StepResult:
    ctx.state.merge("systemic", {"credentials": {"crm": "sk-live-123"}})
    return {}


LEAKY = register(
    WorkflowSpec(
        name="stores_a_secret",
        version=1,
        title="Tries to store a secret in systemic state",
        agent="triage-agent",
        steps=(StepSpec("leak", "Writes a raw secret", _bad_secret, retry=Retry(max_attempts=1)),),
    )
)


def _victim(ctx: StepContext) -> StepResult:
    _hold(ctx, "hold")
    effect = _charge(ctx, "written")
    return {"held": True, "effect": effect["idempotency_key"]}


# A step with room to be cut off from its database mid-flight (timeout well above its hold).
DB_VICTIM = register(
    WorkflowSpec(
        name="db_victim",
        version=1,
        title="Loses its database connection",
        agent="triage-agent",
        steps=(
            StepSpec(
                "hold",
                "Holds a transaction open",
                _victim,
                depends_on=(),
                mode=Mode.ASYNC,
                retry=Retry(max_attempts=3, backoff_seconds=0.2),
                timeout_seconds=15.0,
            ),
            StepSpec("after", "After", lambda ctx: {"after": True}, timeout_seconds=15.0),
        ),
    )
)


def _holds_on_first_attempt(ctx: StepContext) -> StepResult:
    if ctx.step.attempts == 1:
        # Long enough to be killed mid-step; far short of the step's timeout.
        time.sleep(float(ctx.run.input.get("hold", 60)))
    return {"attempt": ctx.step.attempts}


# One long-timeout step: a worker killed while running it must not leave the run stalled for
# the timeout (the heartbeat's short lease decides, workflows.heartbeat).
LONG_STEP = register(
    WorkflowSpec(
        name="long_step",
        version=1,
        title="One step with a two-minute timeout",
        agent="triage-agent",
        steps=(
            StepSpec(
                "hold",
                "Holds on its first attempt",
                _holds_on_first_attempt,
                retry=Retry(max_attempts=3, backoff_seconds=0.1),
                timeout_seconds=120.0,
            ),
        ),
    )
)


def _judged_outcome(outputs: dict[str, dict[str, Any]]) -> tuple[str, str]:
    if outputs.get("verdict", {}).get("ok"):
        return "succeeded", ""
    return "handed_off", "the verdict said no"


# Whether the run succeeded is its last step's output: what the outcome reads must include
# the output committed in the same transaction as the run's end.
JUDGED = register(
    WorkflowSpec(
        name="judged",
        version=1,
        title="Ends as its last step says",
        agent="triage-agent",
        steps=(
            StepSpec("first", "First", lambda ctx: {"first": True}),
            StepSpec("verdict", "Verdict", lambda ctx: {"ok": bool(ctx.run.input.get("ok"))}),
        ),
        outcome=_judged_outcome,
    )
)
