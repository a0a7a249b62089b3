"""The outbox: task sends that survive a broker outage, retried on the delivery policy."""

from datetime import timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone

from workflows import outbox
from workflows.models import Outbox
from workflows.retry import DELIVERY

pytestmark = pytest.mark.django_db


def test_a_task_send_that_fails_backs_off_on_the_delivery_policy_and_is_never_given_up():
    row = Outbox.objects.create(task=outbox.ADVANCE, args=["x"])
    Outbox.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    sent = []
    down = mock.patch.object(outbox, "send", side_effect=ConnectionError("broker down"))
    no_jitter = mock.patch("workflows.retry.random.uniform", return_value=1.0)
    waits = []
    with no_jitter:
        for attempt in range(1, DELIVERY.max_attempts + 3):
            now = timezone.now() + timedelta(hours=attempt)  # well past any wait so far
            with down, mock.patch("workflows.outbox.timezone.now", return_value=now):
                assert outbox.relay_due(grace_seconds=1) == 0
                # Not due again until its backoff has passed: the next scan skips it.
                assert outbox.relay_due(grace_seconds=1) == 0
            row.refresh_from_db()
            assert row.attempts == attempt and "broker down" in row.last_error
            waits.append(round((row.available_at - now).total_seconds()))
    # The delivery backoff, held at its longest: a task send is never dropped.
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]
    later = timezone.now() + timedelta(days=1)
    with (
        mock.patch.object(outbox, "send", side_effect=lambda *a: sent.append(a)),
        mock.patch("workflows.outbox.timezone.now", return_value=later),
    ):
        assert outbox.relay_due(grace_seconds=1) == 1
    assert sent == [(outbox.ADVANCE, ["x"], mock.ANY)]
    assert not Outbox.objects.exists()


# --- wake_after_commit: one drain wake-up per transaction ----------------------------------


@pytest.fixture
def woken():
    """The wake-ups that reach the broker's flag, by task (wake_drain replaced)."""
    calls = []
    with mock.patch.object(outbox, "wake_drain", side_effect=calls.append):
        yield calls


def test_a_transaction_that_asks_for_the_same_wake_up_many_times_wakes_once(
    woken, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        for _ in range(100):
            outbox.wake_after_commit(outbox.DRAIN)
        outbox.wake_after_commit(outbox.DRAIN_RESUMES)
        with transaction.atomic():  # a savepoint inside: the outer hook wakes for it too
            outbox.wake_after_commit(outbox.DRAIN)
    assert sorted(woken) == sorted([outbox.DRAIN, outbox.DRAIN_RESUMES])


def test_nothing_wakes_before_the_commit(woken, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as hooks, transaction.atomic():
        outbox.wake_after_commit(outbox.DRAIN)
    assert woken == [] and len(hooks) == 1


def test_a_wake_up_dropped_with_its_savepoint_does_not_swallow_a_later_one(
    woken, django_capture_on_commit_callbacks
):
    class Undone(Exception):
        pass

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        with pytest.raises(Undone), transaction.atomic():
            outbox.wake_after_commit(outbox.DRAIN)
            raise Undone  # the savepoint rolls back: its hook with it
        outbox.wake_after_commit(outbox.DRAIN)
    assert woken == [outbox.DRAIN]


def test_wake_ups_asked_for_in_savepoints_that_roll_back_leave_the_outer_work_its_own(
    woken, django_capture_on_commit_callbacks
):
    class Undone(Exception):
        pass

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        with pytest.raises(Undone), transaction.atomic():
            with transaction.atomic():
                outbox.wake_after_commit(outbox.DRAIN)
            outbox.wake_after_commit(outbox.DRAIN)
            raise Undone  # both hooks go with this savepoint
        outbox.wake_after_commit(outbox.DRAIN)
    assert woken == [outbox.DRAIN]


def test_a_transaction_after_one_that_woke_wakes_again(woken, django_capture_on_commit_callbacks):
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            outbox.wake_after_commit(outbox.DRAIN)
    assert woken == [outbox.DRAIN, outbox.DRAIN]


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_wakes_at_once(woken):
    outbox.wake_after_commit(outbox.DRAIN)
    assert woken == [outbox.DRAIN]


@pytest.mark.django_db(transaction=True)
def test_a_wake_up_that_fails_never_fails_the_committed_change():
    with mock.patch.object(outbox, "wake_drain", side_effect=RuntimeError("redis gone")) as wake:
        with transaction.atomic():
            outbox.wake_after_commit(outbox.DRAIN)
        outbox.wake_after_commit(outbox.DRAIN)
    assert wake.call_count == 2
