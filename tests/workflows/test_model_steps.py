"""Steps that call a model run alone: declared (`StepSpec(calls_model=True)`, stored in the
plan), never run inline in a drain's batch, but sent as a task of their own to the model
queue — where they keep an async step's guarantees: one attempt at a time behind a lease and a
fence, retries, a dead worker's step taken over.

No wall time is asserted: a "slow model" here is a step body that blocks on an event the test
holds, and what the test checks is what has committed while it blocks."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from workflows import engine, outbox
from workflows.actions import start_run
from workflows.engine import StepContext
from workflows.models import RunStatus, StepRun, StepStatus, TraceEvent, WorkflowRun
from workflows.specs import Retry, Sleep, StepResult, StepSpec, WorkflowSpec, get_spec, register

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
RUN_MODEL_STEP = "workflows.tasks.run_model_step"
BOUNDED = 30  # seconds a thread may take before the test calls it stuck (never asserted)


class Model:
    """The fake model the `think` steps call: counts its calls, blocks while `gate` is shut
    (after setting `entered`), and does what `script` says on each call."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.script: list[str] = []

    def __call__(self, ctx: StepContext) -> StepResult:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(BOUNDED), "the test never opened the gate"
        what = self.script.pop(0) if self.script else "answer"
        if what == "fail":
            raise RuntimeError("the model answered 503")
        if what == "sleep":
            return Sleep.after(0, "ask the model again")
        return {"answer": 42, "attempt": ctx.step.attempts}


MODEL = Model()


@pytest.fixture(autouse=True)
def model(settings) -> Iterator[Model]:
    # As with a model server configured (the offline model's steps stay inline: see below).
    settings.MODEL_STEPS_ALONE = True
    global MODEL
    MODEL = Model()
    yield MODEL
    MODEL.gate.set()


def _think(ctx: StepContext) -> StepResult:
    return MODEL(ctx)


def _quick(ctx: StepContext) -> StepResult:
    return {"ok": True}


def _workflow(name: str, *, calls_model: bool, independent: bool = False) -> WorkflowSpec:
    """prepare -> think (the model) -> finish; `independent`: think and `other` both roots."""
    retry = Retry(max_attempts=3, backoff_seconds=0.01)
    think = StepSpec(
        "think", "Ask the model", _think, calls_model=calls_model, retry=retry, timeout_seconds=60
    )
    if independent:
        steps: tuple[StepSpec, ...] = (
            StepSpec("think", "Ask the model", _think, depends_on=(), calls_model=calls_model),
            StepSpec("other", "Something quick", _quick, depends_on=()),
        )
    else:
        steps = (
            StepSpec("prepare", "Prepare", _quick),
            think,
            StepSpec("finish", "Finish", _quick),
        )
    return register(
        WorkflowSpec(name=name, version=1, title=name, agent="triage-agent", steps=steps)
    )


ALONE = _workflow("model_alone", calls_model=True)
INLINE = _workflow("model_inline", calls_model=False)
SIDE_BY_SIDE = _workflow("model_beside_another", calls_model=True, independent=True)
QUICK = register(
    WorkflowSpec(
        name="quick_chain",
        version=1,
        title="Two quick steps",
        agent="triage-agent",
        steps=(StepSpec("one", "One", _quick), StepSpec("two", "Two", _quick)),
    )
)


def _in_thread(target: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()  # this thread's own connection: the flush must not wait on it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _step(run: WorkflowRun, name: str) -> StepRun:
    return StepRun.objects.get(run=run, name=name)


def _sent(inline_tasks, task: str) -> list[list[Any]]:
    return [args for _, t, args in inline_tasks.sent if t == task]


# --- declared, stored, marked --------------------------------------------------------------


def test_the_plan_says_which_steps_call_a_model_and_a_forced_sync_plan_runs_them_inline():
    plan = ALONE.make_plan({})
    assert [p.to_json().get("calls_model", False) for p in plan] == [False, True, False]
    # Only where set: the plans of workflows without model steps are stored as before.
    assert "calls_model" not in plan[0].to_json()
    assert not any(p.calls_model for p in ALONE.make_plan({}, force_sync=True))


def test_triage_declares_the_steps_that_call_the_model():
    triage = get_spec("support_triage")
    assert [s.name for s in triage.steps if s.calls_model] == [
        "classify",  # call_for_step("triage.classify")
        "draft_reply",  # the draft and the model judge's verdict (and a redraft)
        "propose_actions",  # call_for_step("triage.propose")
        "act",  # _revise: call_for_step("triage.revise") on a round with an answer
    ]
    assert [s.name for s in triage.steps if not s.calls_model] == [
        "read_ticket",
        "wrap_up",
        "schedule_follow_up",
    ]


def test_model_steps_run_alone_wherever_a_model_server_is_configured(monkeypatch):
    from config.settings import integrations

    for env, alone in (
        ({}, False),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, True),
        ({"OPENAI_API_KEY": "sk-test"}, True),
        ({"OPENAI_API_KEY": "sk-test", "MODEL_STEPS_ALONE": "false"}, False),
        ({"MODEL_STEPS_ALONE": "true"}, True),
    ):
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL_STEPS_ALONE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert importlib.reload(integrations).MODEL_STEPS_ALONE is alone, env
    monkeypatch.undo()
    importlib.reload(integrations)


def test_with_the_offline_model_a_model_step_runs_inline(agent, inline_tasks, model, settings):
    """Microseconds: sent alone it would cost more than it spares (see MODEL_STEPS_ALONE)."""
    settings.MODEL_STEPS_ALONE = False
    run = start_run(workflow="model_alone", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert model.calls == 1
    assert not [t for t, _ in inline_tasks.delivered if t == RUN_MODEL_STEP]


def test_the_model_queue_is_routed_and_every_way_of_starting_workers_serves_it():
    assert settings.CELERY_MODEL_QUEUE == settings.CELERY_TASK_DEFAULT_QUEUE + "-model"
    assert settings.CELERY_TASK_ROUTES[outbox.RUN_MODEL_STEP] == {
        "queue": settings.CELERY_MODEL_QUEUE
    }
    from config.celery import app

    routed = app.amqp.router.route({}, outbox.RUN_MODEL_STEP, (), {})
    assert routed["queue"].name == settings.CELERY_MODEL_QUEUE
    # Scale-out: a pool of its own on the model queue (and the workers do not serve it).
    supervised = (ROOT / "config" / "supervisord.conf").read_text()
    assert "-Q %(ENV_CALIBER_MODEL_QUEUE)s -n modeler@" in supervised
    serve = (ROOT / "workflows" / "management" / "commands" / "serve.py").read_text()
    assert "CALIBER_MODEL_QUEUE=settings.CELERY_MODEL_QUEUE," in serve
    # A lone worker serves it too: embedded mode's and the tests'.
    embedded = (ROOT / "workflows" / "embedded.py").read_text()
    assert "                settings.CELERY_MODEL_QUEUE,\n            ]," in embedded
    processes = (ROOT / "tests" / "support" / "processes.py").read_text()
    assert 'queues = f"{queue}-priority,{queue},{queue}-model"' in processes


# --- never inline in a batch ---------------------------------------------------------------


def test_inline_a_blocking_model_step_holds_its_batch_mate(agent, inline_tasks, model):
    """Before: the drain runs the step in its batch, and the batch-mate it has claimed waits
    (both were coordinated in the batch's first round; the round running the model step
    holds the other's step commit)."""
    runs = [start_run(workflow="model_inline", input={}) for _ in range(2)]
    model.gate.clear()
    drain = _in_thread(engine.drain_runs)
    assert model.entered.wait(BOUNDED)
    held = [r for r in WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]) if r.lease_owner]
    assert len(held) == 2  # both claimed by the one batch
    assert [r.status for r in held] == [RunStatus.RUNNING] * 2
    # Both thinks claimed in the round before; one is in the model, the other waits its turn.
    thinks = StepRun.objects.filter(run__in=held, name="think")
    assert [s.status for s in thinks] == [StepStatus.RUNNING] * 2
    assert model.calls == 1
    model.gate.set()
    drain.join(BOUNDED)
    assert not drain.is_alive()
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error


def test_a_blocking_model_step_never_holds_its_batch_mates_commit(agent, inline_tasks, model):
    slow = start_run(workflow="model_alone", input={})
    mate = start_run(workflow="quick_chain", input={})
    inline_tasks.sent.clear()
    model.gate.clear()
    # One batch claims both; the model step is queued for the model pool, not run.
    assert engine.drain_runs() == 2
    assert model.calls == 0
    mate.refresh_from_db()
    assert mate.status == RunStatus.SUCCEEDED, mate.error
    slow.refresh_from_db()
    think = _step(slow, "think")
    assert _step(slow, "prepare").status == StepStatus.SUCCEEDED
    assert think.status == StepStatus.QUEUED and think.attempts == 0
    assert slow.status == RunStatus.RUNNING and slow.lease_owner == ""
    assert _sent(inline_tasks, RUN_MODEL_STEP) == [[str(slow.pk), "think"]]

    # The model pool runs it, blocked in the model; a drain meanwhile commits a new run.
    inline_tasks.sent.clear()
    pool = _in_thread(lambda: engine.run_step(run_id=slow.pk, step_name="think"))
    assert model.entered.wait(BOUNDED)
    think.refresh_from_db()
    assert think.status == StepStatus.RUNNING and think.lease_owner and think.attempts == 1
    late = start_run(workflow="quick_chain", input={})
    assert engine.drain_runs() == 1
    late.refresh_from_db()
    assert late.status == RunStatus.SUCCEEDED, late.error
    assert _step(slow, "think").status == StepStatus.RUNNING  # still in the model

    model.gate.set()
    pool.join(BOUNDED)
    assert not pool.is_alive()
    inline_tasks.drain()
    slow.refresh_from_db()
    assert slow.status == RunStatus.SUCCEEDED, slow.error
    assert model.calls == 1
    assert _step(slow, "think").output == {"answer": 42, "attempt": 1}


# --- an async step's guarantees ------------------------------------------------------------


def test_a_model_step_delivered_twice_runs_once(agent, inline_tasks, model):
    run = start_run(workflow="model_alone", input={})
    inline_tasks.drain(limit=1)  # the drain
    [(at, task, args)] = [s for s in inline_tasks.sent if s[1] == RUN_MODEL_STEP]
    inline_tasks.sent.append((at, task, list(args)))  # the broker delivers it again
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert model.calls == 1
    assert _step(run, "think").attempts == 1


def test_a_model_step_that_fails_is_retried_in_the_model_pool(agent, inline_tasks, model):
    model.script = ["fail"]
    run = start_run(workflow="model_alone", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    think = _step(run, "think")
    assert think.attempts == 2 and model.calls == 2
    assert think.output == {"answer": 42, "attempt": 2}
    assert [a for t, a in inline_tasks.delivered if t == RUN_MODEL_STEP] == [
        [str(run.pk), "think"]
    ] * 2
    assert TraceEvent.objects.filter(run=run, message__contains="attempt 1/3 failed").exists()


def test_a_dead_model_workers_step_is_taken_over_and_its_late_commit_refused(
    agent, inline_tasks, model
):
    run = start_run(workflow="model_alone", input={})
    inline_tasks.drain(limit=1)
    inline_tasks.sent.clear()
    # A model worker claims the step, then dies: its lease runs out with the step running.
    dead = engine._claim_async(run.pk, "think", engine.new_owner())
    assert dead is not None
    from django.utils import timezone

    StepRun.objects.filter(pk=dead.step.pk).update(lease_expires_at=timezone.now())
    engine.advance_run(run_id=run.pk)  # what beat's take_over_expired sends
    assert TraceEvent.objects.filter(run=run, message__contains="lost its worker").exists()
    assert _sent(inline_tasks, RUN_MODEL_STEP) == [[str(run.pk), "think"]]
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _step(run, "think").attempts == 2
    # The presumed dead worker comes back and finishes: the fence refuses its commit.
    engine._execute(dead, inline=False)
    assert _step(run, "think").output == {"answer": 42, "attempt": 2}


def test_a_model_step_resumed_again_and_again_is_not_a_fresh_attempt(agent, inline_tasks, model):
    model.script = ["sleep", "sleep", "sleep"]
    run = start_run(workflow="model_alone", input={})
    StepRun.objects.filter(run=run, name="think").update(max_attempts=1)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert model.calls == 4
    assert _step(run, "think").attempts == 1
    assert len([t for t, _ in inline_tasks.delivered if t == RUN_MODEL_STEP]) == 4


def test_no_sync_step_goes_while_a_sync_model_step_is_out(agent, inline_tasks, model):
    run = start_run(workflow="model_beside_another", input={})
    inline_tasks.drain(limit=1)
    assert _step(run, "think").status == StepStatus.QUEUED
    assert _step(run, "other").status == StepStatus.PENDING
    engine.advance_run(run_id=run.pk)  # a nudge while the model step is out
    assert _step(run, "other").status == StepStatus.PENDING
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _step(run, "other").status == StepStatus.SUCCEEDED


def test_a_triage_run_sends_each_model_step_to_the_model_pool(policies, ticket, inline_tasks):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status in (RunStatus.WAITING, RunStatus.SUCCEEDED), run.error
    sent = [a[1] for t, a in inline_tasks.delivered if t == RUN_MODEL_STEP]
    assert sent[:3] == ["classify", "draft_reply", "propose_actions"]


def test_a_lost_model_step_is_sent_again_to_the_model_pool(agent, inline_tasks, model):
    """Its message lost (the broker restarted empty, or it stalled): beat's resend and a
    round's repair send it again to the model queue, not to a batch worker's."""
    from datetime import timedelta

    from django.utils import timezone

    run = start_run(workflow="model_alone", input={})
    inline_tasks.sent.clear()
    assert engine.drain_runs() == 1
    assert _sent(inline_tasks, RUN_MODEL_STEP) == [[str(run.pk), "think"]]
    long_ago = timezone.now() - timedelta(hours=1)
    StepRun.objects.filter(run=run, name="think").update(dispatched_at=long_ago)
    inline_tasks.sent.clear()
    engine.resend_lost(before=timezone.now())
    assert _sent(inline_tasks, RUN_MODEL_STEP) == [[str(run.pk), "think"]]
    assert _sent(inline_tasks, "workflows.tasks.run_step") == []

    StepRun.objects.filter(run=run, name="think").update(dispatched_at=long_ago)
    inline_tasks.sent.clear()
    engine.advance_run(run_id=run.pk)
    assert _sent(inline_tasks, RUN_MODEL_STEP) == [[str(run.pk), "think"]]
    assert _sent(inline_tasks, "workflows.tasks.run_step") == []
