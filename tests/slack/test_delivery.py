"""Posting and updating messages: one message per channel, every attempt recorded, retries
that honour Slack, and permanent errors shown to people instead of retried forever."""

from datetime import timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone

from escalations import notify
from escalations.actions import decide_escalation
from escalations.models import Decision, Escalation, Verdict, Via
from escalations.slack import delivery
from escalations.slack.models import MessageStatus, Notification, SlackMessage
from escalations.slack.tasks import sweep
from workflows.models import Outbox
from workflows.retry import DELIVERY

from .conftest import BILLING_CHANNEL, SUPPORT_CHANNEL, deliver_all, make_escalation


def outcome_of(message: dict) -> str:
    block = next((b for b in message["blocks"] if b.get("block_id") == "caliber.outcome"), None)
    return block["text"]["text"] if block else ""


def has_buttons(message: dict) -> bool:
    return any(b["type"] == "actions" for b in message["blocks"])


@pytest.mark.django_db
def test_a_new_escalation_posts_one_message_to_its_team_channel(
    slack, agent, policies, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        esc = make_escalation(agent)
    msg = SlackMessage.objects.get(escalation=esc)
    assert (msg.channel, msg.status, msg.ts) == (SUPPORT_CHANNEL, MessageStatus.PENDING, "")
    # Delivery is enqueued after commit, never inside the transaction.
    assert callbacks

    deliver_all()

    [call] = slack.calls_to("chat.postMessage")
    assert call.token == "xoxb-test-token"
    assert call.params["channel"] == SUPPORT_CHANNEL
    assert call.params["blocks"][0]["text"]["text"] == "Review: Send reply to customer"
    assert call.params["link_names"] is False and call.params["unfurl_links"] is False
    msg.refresh_from_db()
    assert msg.status == MessageStatus.POSTED and msg.ts and msg.channel_id.startswith("C")
    assert not msg.needs_sync
    [attempt] = Notification.objects.filter(message=msg)
    assert (attempt.method, attempt.ok, attempt.error) == ("chat.postMessage", True, "")


@pytest.mark.django_db
def test_a_duplicate_delivery_posts_nothing_twice(slack, agent, policies):
    esc = make_escalation(agent)
    deliver_all()
    deliver_all()
    notify.escalation_changed(esc)  # nothing visible changed
    deliver_all()
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert slack.calls_to("chat.update") == []


@pytest.mark.django_db
def test_a_team_without_a_channel_gets_no_message(slack, agent, policies, support):
    support.__class__.objects.filter(pk=support.pk).update(slack_channel="")
    make_escalation(agent)
    assert not SlackMessage.objects.exists()


@pytest.mark.django_db
def test_without_a_token_and_secret_slack_is_off_and_writes_nothing(
    slack, settings, agent, policies
):
    settings.SLACK_SIGNING_SECRET = ""
    make_escalation(agent)
    assert not SlackMessage.objects.exists()
    assert deliver_all() == []
    assert slack.calls == []


@pytest.mark.django_db
def test_a_decision_in_the_browser_updates_the_message(slack, agent, policies, carol):
    esc = make_escalation(agent)
    deliver_all()
    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    assert SlackMessage.objects.get(escalation=esc).needs_sync
    deliver_all()

    [update] = slack.calls_to("chat.update")
    [shown] = slack.all_messages()
    assert update.params["ts"] == shown["ts"] and update.params["channel"] == shown["channel"]
    assert not has_buttons(shown)
    assert ":white_check_mark: *Approved* by *carol* in the browser" in outcome_of(shown)


@pytest.mark.django_db
def test_an_escalation_decided_before_it_was_posted_is_never_posted(slack, agent, policies, carol):
    esc = make_escalation(agent)
    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    deliver_all()
    assert slack.calls == []
    assert SlackMessage.objects.get(escalation=esc).status == MessageStatus.SKIPPED


def move(esc: Escalation, team) -> Escalation:
    """What an SLA chain does when the deadline passes: the same calls, in one transaction."""
    with transaction.atomic():
        esc = Escalation.objects.select_for_update().get(pk=esc.pk)
        previous = esc.team_id
        esc.team = team
        esc.save(update_fields=["team"])
        notify.escalation_changed(esc, previous_team_id=previous)
        notify.escalation_opened(esc)
    return esc


@pytest.mark.django_db
def test_an_sla_move_posts_to_the_next_team_and_updates_the_first(
    slack, agent, policies, billing, bob
):
    esc = make_escalation(agent)
    deliver_all()
    move(esc, billing)
    deliver_all()

    support_msg = SlackMessage.objects.get(escalation=esc, channel=SUPPORT_CHANNEL)
    billing_msg = SlackMessage.objects.get(escalation=esc, channel=BILLING_CHANNEL)
    assert billing_msg.status == MessageStatus.POSTED
    [first, second] = sorted(slack.all_messages(), key=lambda m: m["ts"])
    assert first["ts"] == support_msg.ts and second["ts"] == billing_msg.ts
    assert not has_buttons(first) and "*Moved to Billing*" in first["blocks"][-2]["text"]["text"]
    assert has_buttons(second)

    # Moving again to a team that already has the message does not post twice.
    move(esc, billing)
    deliver_all()
    assert len(slack.calls_to("chat.postMessage")) == 2

    decide_escalation(escalation_id=esc.pk, user=bob, verdict=Verdict.APPROVE, via=Via.WEB)
    deliver_all()
    for shown in slack.all_messages():
        assert not has_buttons(shown)
        assert "*Approved* by *bob* in the browser" in outcome_of(shown)


@pytest.mark.django_db
def test_a_429_is_retried_after_the_time_slack_asks_for(slack, agent, policies):
    esc = make_escalation(agent)
    slack.rate_limit_next("chat.postMessage", retry_after=7)
    [retry_in] = deliver_all()

    assert retry_in == pytest.approx(7.05)
    msg = SlackMessage.objects.get(escalation=esc)
    assert msg.status == MessageStatus.PENDING and msg.error == "ratelimited"
    assert msg.failures == 0  # Slack asked us to wait; that is not a failure
    [attempt] = Notification.objects.filter(message=msg)
    assert (attempt.ok, attempt.http_status, attempt.retry_after) == (False, 429, 7.0)
    assert not attempt.permanent
    assert timedelta(seconds=6) < msg.next_attempt_at - timezone.now() <= timedelta(seconds=7)

    # Before the time is up, nothing calls Slack, whoever asks.
    assert deliver_all() == [None]
    assert sweep() == 0
    assert len(slack.calls_to("chat.postMessage")) == 1

    # Once due, the sweeper would pick it up even if the retry task were lost.
    SlackMessage.objects.filter(pk=msg.pk).update(next_attempt_at=timezone.now())
    assert delivery.due_message_ids() == [msg.pk]
    deliver_all()
    msg.refresh_from_db()
    assert msg.status == MessageStatus.POSTED and msg.error == "" and msg.next_attempt_at is None
    assert [a.ok for a in Notification.objects.filter(message=msg)] == [False, True]


@pytest.mark.django_db
def test_transient_failures_back_off_on_the_delivery_policy_and_eventually_give_up(
    slack, agent, policies
):
    esc = make_escalation(agent)
    tries = DELIVERY.max_attempts
    slack.fail_next("chat.postMessage", "internal_error", status=500, times=tries)
    delays = []
    with mock.patch("workflows.retry.random.uniform", return_value=1.0):  # no jitter
        for _ in range(tries):
            SlackMessage.objects.filter(escalation=esc).update(next_attempt_at=None)
            delays.append(deliver_all()[0])
    # The same waits as a webhook's or an alert's (workflows.retry), a hair late each.
    assert delays[:-1] == pytest.approx([2.05, 4.05, 8.05, 16.05, 32.05, 64.05, 128.05])
    assert delays[-1] is None
    msg = SlackMessage.objects.get(escalation=esc)
    assert msg.status == MessageStatus.FAILED
    assert msg.error.startswith(f"gave up after {tries} attempts")
    assert Notification.objects.filter(message=msg).count() == tries


@pytest.mark.django_db
def test_a_permanent_error_is_surfaced_and_not_retried(
    slack, agent, policies, carol, client, admin_user
):
    esc = make_escalation(agent)
    slack.fail_next("chat.postMessage", "channel_not_found")
    assert deliver_all() == [None]

    msg = SlackMessage.objects.get(escalation=esc)
    assert (msg.status, msg.error) == (MessageStatus.FAILED, "channel_not_found")
    [attempt] = Notification.objects.filter(message=msg)
    assert attempt.permanent and attempt.retry_after is None

    # Not retried: not by a later change, not by the sweeper.
    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    deliver_all()
    SlackMessage.objects.filter(pk=msg.pk).update(requested_at=timezone.now() - timedelta(hours=1))
    assert delivery.due_message_ids() == []
    assert len(slack.calls) == 1

    # Shown where reviewers look, and in the admin.
    client.force_login(carol)
    page = client.get(f"/review/{esc.pk}/").content.decode()
    assert "could not post to #support-review" in page and "channel_not_found" in page
    client.force_login(admin_user)
    listing = client.get("/admin/slack/slackmessage/?status__exact=failed").content.decode()
    assert "channel_not_found" in listing


@pytest.mark.django_db
def test_an_admin_can_retry_a_failed_delivery_once_fixed(
    slack, agent, policies, client, admin_user
):
    esc = make_escalation(agent)
    slack.fail_next("chat.postMessage", "not_in_channel")
    deliver_all()
    msg = SlackMessage.objects.get(escalation=esc)
    client.force_login(admin_user)
    client.post(
        "/admin/slack/slackmessage/",
        {"action": "retry_now", "_selected_action": [msg.pk]},
    )
    msg.refresh_from_db()
    assert msg.status == MessageStatus.PENDING and msg.needs_sync
    deliver_all()
    msg.refresh_from_db()
    assert msg.status == MessageStatus.POSTED


@pytest.mark.django_db
def test_the_page_shows_no_slack_problem_when_there_is_none(slack, agent, policies, carol, client):
    esc = make_escalation(agent)
    deliver_all()
    client.force_login(carol)
    assert "slack-delivery-problems" not in client.get(f"/review/{esc.pk}/").content.decode()


@pytest.mark.django_db
def test_the_sweeper_finds_deliveries_whose_task_was_lost(slack, agent, policies):
    esc = make_escalation(agent)
    msg = SlackMessage.objects.get(escalation=esc)
    # Fresh requests belong to the task enqueued for them.
    assert delivery.due_message_ids() == []
    SlackMessage.objects.filter(pk=msg.pk).update(
        requested_at=timezone.now() - timedelta(minutes=1)
    )
    assert delivery.due_message_ids() == [msg.pk]
    deliver_all()
    assert delivery.due_message_ids() == []


@pytest.mark.django_db
def test_a_delivery_in_progress_is_not_run_twice_at_once(slack, agent, policies, carol):
    esc = make_escalation(agent)
    deliver_all()
    msg = SlackMessage.objects.get(escalation=esc)
    # Someone holds the lease (a worker mid-call): a second task leaves it to them.
    SlackMessage.objects.filter(pk=msg.pk).update(
        lease_until=timezone.now() + timedelta(seconds=60)
    )
    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    assert deliver_all() == [None]
    assert slack.calls_to("chat.update") == []
    # A holder that died lets go when the lease runs out.
    SlackMessage.objects.filter(pk=msg.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    deliver_all()
    assert len(slack.calls_to("chat.update")) == 1


@pytest.mark.django_db
def test_a_change_made_while_slack_was_being_called_is_shown_too(
    slack, agent, policies, carol, monkeypatch
):
    esc = make_escalation(agent)
    deliver_all()
    real_call = delivery.call

    def call_while_carol_decides(method, **kwargs):
        result = real_call(method, **kwargs)
        if not Decision.objects.exists():
            # Her task would find the lease held and leave the work to the holder.
            decide_escalation(
                escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB
            )
        return result

    monkeypatch.setattr(delivery, "call", call_while_carol_decides)
    Escalation.objects.filter(pk=esc.pk).update(claimed_by=carol, claimed_at=timezone.now())
    notify.escalation_changed(Escalation.objects.get(pk=esc.pk))
    deliver_all()

    assert len(slack.calls_to("chat.update")) == 2
    [shown] = slack.all_messages()
    assert "*Approved* by *carol*" in outcome_of(shown)
    assert not SlackMessage.objects.get(escalation=esc).needs_sync


@pytest.mark.django_db
def test_a_reassignment_by_a_person_posts_to_the_new_team_too(
    slack, agent, policies, alice, billing
):
    from escalations.actions import reassign_escalation

    esc = make_escalation(agent)
    deliver_all()
    reassign_escalation(escalation_id=esc.pk, user=alice, team_id=billing.pk)
    deliver_all()
    assert set(SlackMessage.objects.filter(escalation=esc).values_list("channel", flat=True)) == {
        SUPPORT_CHANNEL,
        BILLING_CHANNEL,
    }
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert len(slack.calls_to("chat.update")) == 1


@pytest.mark.django_db
def test_the_sla_chain_posts_to_the_next_team_and_the_expiry_shows_everywhere(
    slack, agent, policies, billing
):
    from escalations.actions import handle_sla_breach

    esc = make_escalation(agent)
    deliver_all()
    past = timezone.now() - timedelta(minutes=1)
    Escalation.objects.filter(pk=esc.pk).update(
        chain=[billing.pk], hops=0, sla_minutes=5, sla_due_at=past, expiry_behaviour="reject"
    )
    assert handle_sla_breach(escalation_id=esc.pk) == "moved"
    deliver_all()
    assert SlackMessage.objects.get(escalation=esc, channel=BILLING_CHANNEL).ts
    assert len(slack.calls_to("chat.update")) == 1

    Escalation.objects.filter(pk=esc.pk).update(sla_due_at=past)
    handle_sla_breach(escalation_id=esc.pk)
    deliver_all()
    shown = slack.all_messages()
    assert len(shown) == 2
    for message in shown:
        assert not has_buttons(message)
        assert ":hourglass: *Expired*: nobody decided in time" in outcome_of(message)
        assert "reject on expiry" in outcome_of(message)


@pytest.mark.django_db
def test_one_task_brings_every_channel_of_an_escalation_up_to_date(
    slack, agent, policies, billing, bob, django_capture_on_commit_callbacks
):
    from escalations.slack.tasks import sync_escalation

    esc = make_escalation(agent)
    deliver_all()
    esc = move(esc, billing)  # now shown in the support and the billing channel
    deliver_all()
    assert SlackMessage.objects.filter(escalation=esc, status=MessageStatus.POSTED).count() == 2
    slack.calls.clear()
    Outbox.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=False):
        decide_escalation(escalation_id=esc.pk, user=bob, verdict=Verdict.APPROVE, via=Via.WEB)
    slack_sends = Outbox.objects.filter(task__startswith="slack.")
    assert len(slack_sends) == 1  # one Celery send per change, however many channels

    sync_escalation(str(esc.pk))  # what the worker runs for it
    assert len(slack.calls_to("chat.update")) == 2
    for shown in slack.all_messages():
        assert ":white_check_mark: *Approved* by *bob*" in outcome_of(shown)
    assert not any(m.needs_sync for m in SlackMessage.objects.filter(escalation=esc))
    sync_escalation(str(esc.pk))  # a duplicate task finds nothing to do
    assert len(slack.calls_to("chat.update")) == 2
