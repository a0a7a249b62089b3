"""Engine test helpers: the research agent, and running the engine's tasks in this process
(deterministic deliveries, duplicates on demand) instead of through a worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest

from escalations.actions.summaries import write_waiting_summaries
from escalations.models import AgentProfile, Team
from workflows import engine


@pytest.fixture
def research_agent(support: Team) -> AgentProfile:
    return AgentProfile.objects.create(name="research-agent", team=support)


@dataclass
class InlineTasks:
    """Every task the engine sends lands here; `drain` runs them like a worker would."""

    sent: list[tuple[float, str, list[Any]]] = field(default_factory=list)
    delivered: list[tuple[str, list[Any]]] = field(default_factory=list)

    def send(self, task: str, args: list[Any], countdown: float = 0) -> None:
        self.sent.append((time.monotonic() + max(countdown or 0, 0), task, list(args)))

    def deliver(self, task: str, args: list[Any]) -> None:
        self.delivered.append((task, list(args)))
        if task in ("workflows.tasks.advance_run", "workflows.tasks.resume_run"):
            engine.advance_run(run_id=uuid.UUID(args[0]))
        elif task == "workflows.tasks.drain_runs":
            engine.drain_runs()
        elif task == "workflows.tasks.drain_resumes":
            engine.drain_runs(starts=False)
        elif task in ("workflows.tasks.run_step", "workflows.tasks.run_model_step"):
            engine.run_step(run_id=uuid.UUID(args[0]), step_name=args[1])
        elif task == "escalations.tasks.write_summaries":
            write_waiting_summaries()
        else:
            raise AssertionError(f"unexpected task {task}")

    def drain(self, *, limit: int = 500) -> int:
        done = 0
        while self.sent and done < limit:
            self.sent.sort(key=lambda t: t[0])
            at, task, args = self.sent.pop(0)
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 5))
            self.deliver(task, args)
            done += 1
        return done


@pytest.fixture
def inline_tasks() -> Iterator[InlineTasks]:
    tasks = InlineTasks()
    with (
        mock.patch("workflows.outbox.send", side_effect=tasks.send),
        mock.patch(
            "workflows.tasks.enqueue_advance",
            side_effect=lambda run_id, countdown=0: tasks.send(
                "workflows.tasks.advance_run", [str(run_id)], countdown
            ),
        ),
    ):
        yield tasks


@pytest.fixture(autouse=True)
def _worker_settles(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test with a real worker: let the worker finish what the test set off (a
    triage run's follow-up run starts as the run finishes) before the database is flushed.
    A TRUNCATE racing a worker's open transaction can deadlock and fail the teardown."""
    yield
    if "celery_worker" not in request.fixturenames:
        return
    from workflows.models import Outbox, StepRun, StepStatus, WorkflowRun

    deadline = time.monotonic() + 10
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        busy = (
            WorkflowRun.objects.exclude(lease_owner="").exists()
            or StepRun.objects.filter(status=StepStatus.RUNNING).exists()
            or Outbox.objects.exists()
        )
        quiet = 0 if busy else quiet + 1
        time.sleep(0.05)
