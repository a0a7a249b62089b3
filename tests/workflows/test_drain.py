"""The drain: pending runs are the start queue, claimed in batches by a drain woken once
(engine.drain_runs, outbox.wake_drain)."""

from __future__ import annotations

import pytest

from workflows import engine, outbox
from workflows.actions import start_run
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

DRAIN = "workflows.tasks.drain_runs"


def _sent(inline_tasks) -> list[str]:
    return [task for _, task, _ in inline_tasks.sent]


def test_many_starts_send_one_wake_up_and_one_drain_runs_them_all(agent, inline_tasks):
    runs = [start_run(workflow="fan_out", input={}) for _ in range(5)]
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.sent.clear()
    # Batches of 2 then 4: the full first batch woke a second drain for another worker.
    assert engine.drain_runs() == 5
    assert _sent(inline_tasks).count(DRAIN) == 1
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING  # its fan-out queued, the lease let go
        assert run.lease_owner == ""


def test_the_drain_clears_the_flag_first_so_a_later_start_wakes_again(agent, inline_tasks):
    start_run(workflow="fan_out", input={})
    start_run(workflow="fan_out", input={})
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.drain()
    inline_tasks.sent.clear()
    late = start_run(workflow="fan_out", input={})
    assert _sent(inline_tasks) == [DRAIN]
    inline_tasks.drain()
    late.refresh_from_db()
    assert late.status == RunStatus.SUCCEEDED, late.error


def test_a_run_someone_holds_is_not_claimed(agent, inline_tasks):
    held = start_run(workflow="fan_out", input={})
    WorkflowRun.objects.filter(pk=held.pk).update(lease_owner="someone-else")
    free = start_run(workflow="fan_out", input={})
    assert engine.drain_runs() == 1
    held.refresh_from_db()
    free.refresh_from_db()
    assert held.status == RunStatus.PENDING and held.lease_owner == "someone-else"
    assert free.status == RunStatus.RUNNING


def test_past_its_time_a_drain_hands_the_rest_back_and_wakes_another(agent, inline_tasks):
    runs = [start_run(workflow="fan_out", input={}) for _ in range(3)]
    inline_tasks.sent.clear()
    outbox.drain_woken()
    assert engine.drain_runs(seconds=0) == 0
    assert _sent(inline_tasks) == [DRAIN]
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.PENDING and run.lease_owner == ""
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error


def test_a_wake_up_the_broker_refused_waits_in_the_outbox(agent, monkeypatch):
    from workflows.models import Outbox

    def broker_gone(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(outbox, "send", broker_gone)
    start_run(workflow="fan_out", input={})
    [row] = Outbox.objects.all()
    assert row.task == DRAIN and row.attempts == 1
    # The flag went with the failed send: the next start tries again.
    monkeypatch.undo()
    sent: list[str] = []
    monkeypatch.setattr(outbox, "send", lambda task, args, countdown=0: sent.append(task))
    start_run(workflow="fan_out", input={})
    assert sent == [DRAIN]
