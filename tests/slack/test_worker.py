"""The whole path through real processes: a celery worker delivering to the local Slack,
signed clicks racing the browser, Slack's rate limit honoured through Celery."""

import threading
from collections import Counter

import pytest
from django.db import connection
from django.db.models import F, Q
from django.test import Client
from django.utils import timezone

from escalations.models import Decision
from escalations.slack import blocks
from escalations.slack.models import MessageStatus, Notification, SlackMessage
from tests.conftest import wait_for

from .conftest import click, link, make_escalation, post_signed
from .test_delivery import has_buttons, outcome_of

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def posted(esc) -> SlackMessage | None:
    return SlackMessage.objects.filter(escalation=esc, status=MessageStatus.POSTED).first()


def all_settled() -> bool:
    now = timezone.now()
    return not SlackMessage.objects.filter(
        Q(synced__lt=F("sync_requested")) | Q(lease_until__gt=now),
        status__in=[MessageStatus.PENDING, MessageStatus.POSTED],
    ).exists()


def test_a_429_is_retried_through_celery_after_retry_after_then_succeeds(
    slack, agent, policies, slack_worker
):
    slack.rate_limit_next("chat.postMessage", retry_after=1)
    esc = make_escalation(agent)
    msg = wait_for(lambda: posted(esc))

    first, second = slack.calls_to("chat.postMessage")
    assert second.at - first.at >= 1.0  # not before Slack said we could
    attempts = list(Notification.objects.filter(message=msg))
    assert [(a.ok, a.http_status, a.error) for a in attempts] == [
        (False, 429, "ratelimited"),
        (True, 200, ""),
    ]
    assert attempts[0].retry_after == 1.0
    assert len(slack.all_messages()) == 1  # retried, not duplicated


def test_a_permanent_error_through_celery_is_recorded_once_and_left_alone(
    slack, agent, policies, slack_worker
):
    slack.fail_next("chat.postMessage", "invalid_auth")
    esc = make_escalation(agent)
    msg = wait_for(
        lambda: SlackMessage.objects.filter(escalation=esc, status=MessageStatus.FAILED).first()
    )
    assert msg.error == "invalid_auth"
    assert Notification.objects.filter(message=msg).count() == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


def test_slack_and_the_browser_deciding_at_once_make_exactly_one_decision_every_time(
    slack, agent, policies, alice, carol, slack_worker
):
    """Alice approves in Slack while Carol rejects in the browser, released together by a
    barrier, 100 times: one decision each time, and every message shows that one."""
    link("U_ALICE", alice)
    slack_client, browser = Client(), Client()
    browser.force_login(carol)
    escalations, winners = [], Counter()

    for i in range(100):
        esc = make_escalation(agent, title=f"race {i}")
        wait_for(lambda esc=esc: posted(esc))
        barrier = threading.Barrier(2)
        status = {"slack": 0, "web": 0}

        def via_slack(esc=esc, barrier=barrier, status=status):
            try:
                barrier.wait()
                status["slack"] = post_signed(slack_client, click(esc, blocks.APPROVE)).status_code
            finally:
                connection.close()

        def via_browser(esc=esc, barrier=barrier, status=status):
            try:
                barrier.wait()
                status["web"] = browser.post(
                    f"/review/{esc.pk}/decide/", {"verdict": "reject", "reason": "browser says no"}
                ).status_code
            finally:
                connection.close()

        threads = [threading.Thread(target=via_slack), threading.Thread(target=via_browser)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert status == {"slack": 200, "web": 302}, f"round {i}: {status}"
        [decision] = Decision.objects.filter(escalation=esc)
        winners[decision.via] += 1
        escalations.append(esc)

    wait_for(all_settled, timeout=120)
    for esc in escalations:
        decision = Decision.objects.select_related("decided_by").get(escalation=esc)
        expected = (
            ":white_check_mark: *Approved* by *alice* in Slack"
            if decision.via == "slack"
            else ":x: *Rejected* by *carol* in the browser"
        )
        messages = list(SlackMessage.objects.filter(escalation=esc))
        assert messages, f"{esc.pk} has no Slack message"
        for msg in messages:
            shown = slack.messages[(msg.channel_id, msg.ts)]
            assert expected in outcome_of(shown), (esc.pk, winners, outcome_of(shown))
            assert not has_buttons(shown)
    print("winners over 100 rounds:", dict(winners))
