"""The outbox: task sends that survive a broker outage, retried on the delivery policy."""

from datetime import timedelta
from unittest import mock

import pytest
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
