"""A Redis restarted empty lost every queued message: the relay notices (its epoch key is
gone) and the outbox sends again what each run waits on, at once."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from workflows import engine, leases, outbox
from workflows.actions import start_run
from workflows.models import Outbox, RunStatus, StepRun, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(outbox.EPOCH_KEY)
    yield client
    client.close()


def test_the_first_caller_after_a_restart_and_only_it_is_told(broker):
    assert outbox.broker_restarted() is True
    assert outbox.broker_restarted() is False
    assert outbox.broker_restarted(broker) is False
    broker.delete(outbox.EPOCH_KEY)  # what a restart without persistence does
    assert outbox.broker_restarted(broker) is True


def test_what_runs_wait_on_is_sent_again_through_the_outbox(agent):
    sent: list[tuple[str, list[str]]] = []
    with mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a))):
        waiting_to_start = start_run(workflow="fan_out", input={})
        mid_fan_out = start_run(workflow="fan_out", input={})
    # Both starts woke one drain, whose message went to a broker that then lost it.
    assert sent == [(outbox.DRAIN, [])] and not Outbox.objects.exists()
    past = timezone.now() - timedelta(seconds=5)
    WorkflowRun.objects.filter(pk__in=[waiting_to_start.pk, mid_fan_out.pk]).update(updated_at=past)
    WorkflowRun.objects.filter(pk=mid_fan_out.pk).update(status=RunStatus.RUNNING)
    StepRun.objects.filter(run=mid_fan_out, name="start").update(status=StepStatus.SUCCEEDED)
    StepRun.objects.filter(run=mid_fan_out, name__startswith="gather").update(
        status=StepStatus.QUEUED, dispatched_at=past
    )
    sent.clear()
    with mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a))):
        assert engine.resend_lost(before=timezone.now()) == 5
    assert sorted(sent) == sorted(
        [
            (outbox.ADVANCE, [str(waiting_to_start.pk)]),
            (outbox.ADVANCE, [str(mid_fan_out.pk)]),
            *[(outbox.RUN_STEP, [str(mid_fan_out.pk), f"gather_{x}"]) for x in "abc"],
        ]
    )
    assert not Outbox.objects.exists()  # relayed and deleted


def test_nothing_sent_after_the_restart_is_sent_again(agent):
    with mock.patch("workflows.outbox.send"):
        start_run(workflow="fan_out", input={})
    with mock.patch("workflows.outbox.send") as send:
        assert engine.resend_lost(before=timezone.now() - timedelta(seconds=60)) == 0
    send.assert_not_called()


def test_the_relay_task_resends_only_after_a_restart(agent):
    from workflows.tasks import relay_outbox

    with (
        mock.patch("workflows.outbox.broker_restarted", return_value=False),
        mock.patch("workflows.engine.resend_lost") as resend,
    ):
        relay_outbox()
    resend.assert_not_called()
    with (
        mock.patch("workflows.outbox.broker_restarted", return_value=True),
        mock.patch("workflows.engine.resend_lost", return_value=0) as resend,
    ):
        relay_outbox()
    resend.assert_called_once()


def test_workers_wait_out_a_broker_outage_retrying_every_second_at_most():
    from celery.utils.imports import symbol_by_name

    from config.celery import BROKER_RETRY_MAX_SECONDS, Consumer, app

    assert app.conf.broker_connection_max_retries is None  # never give up and exit
    assert symbol_by_name(app.conf.worker_consumer) is Consumer
    assert BROKER_RETRY_MAX_SECONDS <= 1


def test_a_run_a_live_lease_was_moving_gets_an_advance_once_the_lease_has_run_out(agent):
    """Its holder's sends during the outage may be lost too: without this, only the
    reconciler's 60 s stall found such a run."""
    with mock.patch("workflows.outbox.send"):
        run = start_run(workflow="fan_out", input={})
    WorkflowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        updated_at=timezone.now() - timedelta(seconds=5),
        lease_owner="worker:1",
        lease_expires_at=timezone.now() + timedelta(seconds=3),
    )
    sent: list[tuple[str, list[str], float]] = []
    with mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a, c))):
        engine.resend_lost(before=timezone.now())
    advances = [(a, c) for t, a, c in sent if t == outbox.ADVANCE]
    assert [a for a, _ in advances] == [[str(run.pk)]]
    # Sent with a countdown past a lease's length, not at once.
    assert advances[0][1] > leases.lease_seconds()


def test_a_queued_step_a_transaction_held_is_sent_again_once_it_lets_go(agent):
    """resend_lost skips rows another transaction holds (a worker's advance_run locks the
    run's steps); such a step, still queued from before the restart, is sent once free:
    an advance re-sends a queued step only after RUN_STALL_SECONDS."""
    import threading

    from django.db import connection, transaction

    with mock.patch("workflows.outbox.send"):
        run = start_run(workflow="fan_out", input={})
    past = timezone.now() - timedelta(seconds=5)
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, updated_at=past)
    StepRun.objects.filter(run=run, name="start").update(status=StepStatus.SUCCEEDED)
    StepRun.objects.filter(run=run, name__startswith="gather").update(
        status=StepStatus.QUEUED, dispatched_at=past
    )
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                list(StepRun.objects.select_for_update().filter(run=run, name="gather_b"))
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    sent: list[tuple[str, list[str]]] = []
    try:
        with mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a))):
            engine.resend_lost(before=timezone.now())
    finally:
        release.set()
        holder.join()
    steps = sorted(a[1] for t, a in sent if t == outbox.RUN_STEP)
    assert steps == ["gather_a", "gather_b", "gather_c"]
