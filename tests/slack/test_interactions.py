"""/slack/interactions/: verified before anything else, the same decide action as the
browser, refusals that change nothing, and replies well inside Slack's 3 seconds."""

import json
import time
from unittest import mock

import pytest
from django.contrib.auth.models import User

from escalations.models import Decision, EscalationStatus, Verdict, Via
from escalations.slack import blocks, conf, delivery
from escalations.slack.interactions import VIEWS_OPEN_TIMEOUT
from escalations.slack.models import (
    IdentitySource,
    Notification,
    SeenRequest,
    SlackIdentity,
    SlackMessage,
)

from .conftest import (
    click,
    deliver_all,
    form_body,
    link,
    make_escalation,
    post_signed,
    signature_headers,
    submission,
)


class FixedClock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def snapshot(esc):
    """Everything an interaction could write."""
    esc.refresh_from_db()
    return (
        esc.status,
        Decision.objects.count(),
        SeenRequest.objects.count(),
        Notification.objects.count(),
        SlackIdentity.objects.count(),
        list(SlackMessage.objects.values_list("sync_requested", flat=True)),
    )


@pytest.fixture
def esc(slack, agent, policies, alice):
    e = make_escalation(agent)
    deliver_all()
    link("U_ALICE", alice)
    slack.calls.clear()
    return e


# --- the approve flow ------------------------------------------------------------------------


@pytest.mark.django_db
def test_approve_in_slack_decides_as_alice_and_the_message_shows_it(esc, slack, client, alice):
    response = post_signed(client, click(esc, blocks.APPROVE))
    assert response.status_code == 200

    decision = Decision.objects.get(escalation=esc)
    assert (decision.decided_by, decision.verdict, decision.via) == (alice, "approve", "slack")
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED
    # No Slack call inside the request: the update follows after the ack.
    assert slack.calls == []

    deliver_all()
    [shown] = slack.all_messages()
    assert not any(b["type"] == "actions" for b in shown["blocks"])
    assert ":white_check_mark: *Approved* by *alice* in Slack" in json.dumps(shown["blocks"])


# --- the reject flow, through the modal --------------------------------------------------------


@pytest.mark.django_db
def test_reject_opens_a_modal_and_its_submission_rejects_with_the_reason(esc, slack, client, alice):
    response = post_signed(client, click(esc, blocks.REJECT, trigger_id="trig-42"))
    assert response.status_code == 200
    assert not Decision.objects.exists()  # a click on Reject alone decides nothing
    [opened] = slack.calls_to("views.open")
    assert opened.params["trigger_id"] == "trig-42"
    view = opened.params["view"]
    assert view["callback_id"] == blocks.REJECT_CALLBACK
    assert json.loads(view["private_metadata"])["escalation"] == str(esc.pk)

    response = post_signed(client, submission(esc, "  Wrong customer, check the account.  "))
    assert response.status_code == 200 and response.content == b""  # closes the modal
    decision = Decision.objects.get(escalation=esc)
    assert (decision.decided_by, decision.verdict, decision.via) == (alice, "reject", "slack")
    assert decision.reason == "Wrong customer, check the account."

    deliver_all()
    [shown] = slack.all_messages()
    outcome = json.dumps(shown["blocks"])
    assert ":x: *Rejected* by *alice* in Slack" in outcome
    assert "Wrong customer, check the account." in outcome


@pytest.mark.django_db
def test_an_empty_reason_keeps_the_modal_open_with_an_error_and_decides_nothing(esc, client):
    before = snapshot(esc)
    response = post_signed(client, submission(esc, "   "))
    assert response.status_code == 200
    body = response.json()
    assert body["response_action"] == "errors" and "reason" in body["errors"]
    after = snapshot(esc)
    assert after[:2] == before[:2] and after[3:] == before[3:]


@pytest.mark.django_db
def test_the_reject_form_is_not_opened_for_an_escalation_already_decided(esc, slack, client, carol):
    from escalations.actions import decide_escalation

    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    post_signed(client, click(esc, blocks.REJECT))
    assert slack.calls_to("views.open") == []
    assert Decision.objects.get().decided_by == carol


@pytest.mark.django_db
def test_the_edit_link_button_is_acknowledged_and_does_nothing(esc, client):
    payload = click(esc, blocks.OPEN)
    before = snapshot(esc)
    assert post_signed(client, payload).status_code == 200
    after = snapshot(esc)
    assert (after[0], after[1]) == (before[0], before[1])


# --- requests that must change nothing ---------------------------------------------------------


def _post(client, body: bytes, headers: dict):
    return client.post(
        "/slack/interactions/",
        data=body,
        content_type="application/x-www-form-urlencoded",
        **headers,
    )


@pytest.mark.django_db
def test_a_forged_signature_is_refused_and_nothing_is_written(esc, slack, client):
    body = form_body(click(esc, blocks.APPROVE))
    before = snapshot(esc)
    response = _post(client, body, signature_headers(body, secret="not-the-secret"))
    assert response.status_code == 401
    assert snapshot(esc) == before and slack.calls == []


@pytest.mark.django_db
@pytest.mark.parametrize("missing", ["HTTP_X_SLACK_SIGNATURE", "HTTP_X_SLACK_REQUEST_TIMESTAMP"])
def test_a_request_without_the_signature_headers_is_refused(esc, client, missing):
    body = form_body(click(esc, blocks.APPROVE))
    headers = signature_headers(body)
    del headers[missing]
    before = snapshot(esc)
    assert _post(client, body, headers).status_code == 401
    assert snapshot(esc) == before


@pytest.mark.django_db
def test_an_unsigned_request_is_refused(esc, client):
    before = snapshot(esc)
    assert _post(client, form_body(click(esc, blocks.APPROVE)), {}).status_code == 401
    assert snapshot(esc) == before


@pytest.mark.django_db
def test_a_body_altered_after_signing_is_refused(esc, client, bob):
    link("U_BOB", bob)
    signed_for = form_body(click(esc, blocks.APPROVE, slack_user="U_BOB"))
    headers = signature_headers(signed_for)
    altered = form_body(click(esc, blocks.APPROVE, slack_user="U_ALICE"))
    before = snapshot(esc)
    assert _post(client, altered, headers).status_code == 401
    assert snapshot(esc) == before


@pytest.mark.django_db
def test_a_timestamp_that_is_not_a_number_is_refused(esc, client):
    body = form_body(click(esc, blocks.APPROVE))
    headers = signature_headers(body)
    headers["HTTP_X_SLACK_REQUEST_TIMESTAMP"] = "soon"
    before = snapshot(esc)
    assert _post(client, body, headers).status_code == 401
    assert snapshot(esc) == before


@pytest.mark.django_db
def test_a_stale_request_is_refused_by_the_five_minute_window(esc, client, monkeypatch):
    signed_at = 1_800_000_000
    body = form_body(click(esc, blocks.APPROVE))
    headers = signature_headers(body, ts=signed_at)
    before = snapshot(esc)

    monkeypatch.setattr(conf, "CLOCK", FixedClock(signed_at + 301))
    assert _post(client, body, headers).status_code == 401
    monkeypatch.setattr(conf, "CLOCK", FixedClock(signed_at - 301))
    assert _post(client, body, headers).status_code == 401
    assert snapshot(esc) == before

    # The same request inside the window is fine: the clock, not the request, was the problem.
    monkeypatch.setattr(conf, "CLOCK", FixedClock(signed_at + 299))
    assert _post(client, body, headers).status_code == 200
    assert Decision.objects.filter(escalation=esc).count() == 1


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("inside a test transaction", marks=pytest.mark.django_db),
        # As daphne runs the view: the nonce INSERT in autocommit, no savepoint around it.
        pytest.param("as the server runs it", marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_a_replayed_request_is_refused_and_decides_nothing_twice(mode, esc, client):
    body = form_body(click(esc, blocks.APPROVE))
    headers = signature_headers(body)
    assert _post(client, body, headers).status_code == 200
    before = snapshot(esc)
    assert _post(client, body, headers).status_code == 401
    assert snapshot(esc) == before
    assert Decision.objects.filter(escalation=esc).count() == 1


@pytest.mark.django_db
def test_a_replayed_modal_submission_is_refused(esc, client):
    body = form_body(submission(esc, "No."))
    headers = signature_headers(body)
    assert _post(client, body, headers).status_code == 200
    before = snapshot(esc)
    assert _post(client, body, headers).status_code == 401
    assert snapshot(esc) == before


@pytest.mark.django_db
def test_a_signed_request_without_a_json_payload_is_a_bad_request(esc, client):
    body = b"payload=not-json"
    before = snapshot(esc)
    assert _post(client, body, signature_headers(body)).status_code == 400
    assert snapshot(esc)[:2] == before[:2]


@pytest.mark.django_db
def test_with_slack_off_the_endpoint_does_not_exist(esc, client, settings):
    settings.SLACK_BOT_TOKEN = ""
    assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 404
    assert not Decision.objects.exists()


# --- who may decide -------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_unknown_slack_user_is_told_so_and_nothing_is_decided(esc, slack, client):
    response = post_signed(client, click(esc, blocks.APPROVE, slack_user="U_STRANGER"))
    assert response.status_code == 200
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN and not Decision.objects.exists()
    [lookup] = slack.calls_to("users.info")
    assert lookup.params["user"] == "U_STRANGER"
    # The miss is remembered: a second click does not ask Slack again.
    post_signed(client, click(esc, blocks.APPROVE, slack_user="U_STRANGER"))
    assert len(slack.calls_to("users.info")) == 1
    assert SlackIdentity.objects.get(slack_user_id="U_STRANGER").user is None


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_refusal_reaches_the_clicker_as_an_ephemeral_message(
    slack, agent, policies, client, slack_worker
):
    from tests.conftest import wait_for

    esc = make_escalation(agent)
    wait_for(lambda: slack.calls_to("chat.postMessage"))
    post_signed(client, click(esc, blocks.APPROVE, slack_user="U_STRANGER", channel="C_SUP"))
    [ephemeral] = wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    assert ephemeral.params["user"] == "U_STRANGER" and ephemeral.params["channel"] == "C_SUP"
    assert "not linked to a Caliber reviewer" in ephemeral.params["text"]
    assert f"/review/{esc.pk}/" in ephemeral.params["text"]
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_a_slack_user_is_matched_by_email_once_and_then_cached(esc, slack, client, carol):
    User.objects.filter(pk=carol.pk).update(email="Carol@Example.com")
    slack.add_user("U_CAROL", "carol@example.com")
    post_signed(client, click(esc, blocks.APPROVE, slack_user="U_CAROL"))
    assert Decision.objects.get(escalation=esc).decided_by == carol
    identity = SlackIdentity.objects.get(slack_user_id="U_CAROL")
    assert (identity.user, identity.source) == (carol, IdentitySource.EMAIL)

    other = make_escalation(esc.action.agent, title="another")
    post_signed(client, click(other, blocks.APPROVE, slack_user="U_CAROL"))
    assert Decision.objects.get(escalation=other).decided_by == carol
    assert len(slack.calls_to("users.info")) == 1


@pytest.mark.django_db
def test_an_email_shared_by_two_accounts_maps_to_nobody(esc, slack, client, carol, bob):
    User.objects.filter(pk__in=[carol.pk, bob.pk]).update(email="team@example.com")
    slack.add_user("U_SHARED", "team@example.com")
    post_signed(client, click(esc, blocks.APPROVE, slack_user="U_SHARED"))
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_an_admin_link_wins_over_the_email(esc, slack, client, carol, alice):
    User.objects.filter(pk=carol.pk).update(email="carol@example.com")
    slack.add_user("U_X", "carol@example.com")
    link("U_X", alice)
    post_signed(client, click(esc, blocks.APPROVE, slack_user="U_X"))
    assert Decision.objects.get(escalation=esc).decided_by == alice
    assert slack.calls_to("users.info") == []


@pytest.mark.django_db
def test_a_reviewer_of_another_team_is_refused_and_nothing_is_written(esc, slack, client, bob):
    link("U_BOB", bob)
    before = snapshot(esc)
    assert post_signed(client, click(esc, blocks.APPROVE, slack_user="U_BOB")).status_code == 200
    after = snapshot(esc)
    assert after[:2] == before[:2] == (EscalationStatus.OPEN, 0)
    assert after[3:] == before[3:]  # no attempt, no identity, no message change

    post_signed(client, click(esc, blocks.REJECT, slack_user="U_BOB"))
    assert slack.calls_to("views.open") == []
    post_signed(client, submission(esc, "not mine to say", slack_user="U_BOB"))
    assert snapshot(esc)[:2] == (EscalationStatus.OPEN, 0)


@pytest.mark.django_db
def test_a_deactivated_reviewer_is_refused(esc, client, alice):
    User.objects.filter(pk=alice.pk).update(is_active=False)
    post_signed(client, click(esc, blocks.APPROVE))
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_a_click_after_a_decision_elsewhere_decides_nothing_more(esc, client, carol):
    from escalations.actions import decide_escalation

    decide_escalation(
        escalation_id=esc.pk, user=carol, verdict=Verdict.REJECT, via=Via.WEB, reason="no"
    )
    assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 200
    decision = Decision.objects.get(escalation=esc)
    assert (decision.decided_by, decision.verdict) == (carol, "reject")
    response = post_signed(client, submission(esc, "me too"))
    assert "Too late" in json.dumps(response.json())
    assert Decision.objects.count() == 1


@pytest.mark.django_db
def test_the_ack_of_an_approve_makes_no_slack_call_so_a_slow_slack_cannot_delay_it(
    esc, slack, client
):
    no_slack = mock.patch.object(conf, "client", side_effect=AssertionError("Slack in the ack"))
    with no_slack:
        assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 200
    assert Decision.objects.filter(escalation=esc).exists()


@pytest.mark.django_db(transaction=True)
def test_a_click_whose_resume_cannot_be_sent_is_still_acked_and_decided(esc, client, monkeypatch):
    from kombu.exceptions import OperationalError

    from workflows import tasks

    def broker_down(run_id, countdown=0):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks, "enqueue_advance", broker_down)
    # The decision is committed before the send is tried: an error page would tell the
    # clicker it failed when it did not (the reconciler resumes the run later).
    assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 200
    assert Decision.objects.get(escalation=esc).via == "slack"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_same_click_delivered_twice_decides_once_and_the_second_is_told_who_won(
    slack, agent, policies, client, alice, slack_worker, monkeypatch
):
    from tests.conftest import wait_for

    esc = make_escalation(agent)
    link("U_ALICE", alice)
    wait_for(lambda: slack.calls_to("chat.postMessage"))
    payload = click(esc, blocks.APPROVE)
    # Slack re-sends a click it got no timely ack for, signed anew at a later second: not a
    # replay, a duplicate. Both timestamps fixed (and the verifier's clock with them): read
    # from the wall clock, the two fell in the same second or not by chance, and when they
    # did not the "re-sent" request was signed exactly like the first, a true replay (401).
    signed_at = int(time.time())
    monkeypatch.setattr(conf, "CLOCK", FixedClock(signed_at + 5))
    assert post_signed(client, payload, ts=signed_at).status_code == 200
    assert post_signed(client, payload, ts=signed_at + 3).status_code == 200
    [decision] = Decision.objects.filter(escalation=esc)
    assert (decision.decided_by, decision.via) == (alice, "slack")
    [notice] = wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    assert notice.params["user"] == "U_ALICE"
    told = notice.params["text"]
    assert "Too late: this escalation was already approved by alice via slack" in told


@pytest.mark.django_db
def test_a_slow_slack_cannot_hold_the_reject_click_past_slacks_three_seconds(esc, slack, client):
    # views.open has to happen inside the click's request (its trigger_id expires), so it
    # is the one Slack call there: it is given up on in time to still ack.
    from tests.conftest import wait_for

    slack.delay = 3.5
    timeouts = []
    real_call = delivery.call

    def call(method, **kwargs):
        timeouts.append(kwargs.get("timeout"))
        return real_call(method, **kwargs)

    with mock.patch.object(delivery, "call", call):
        assert post_signed(client, click(esc, blocks.REJECT)).status_code == 200
    # The one Slack call in the ack is cut off well inside Slack's 3 s (a socket timeout,
    # not a clock read here): with the rest of the ack, it still answers in time.
    assert timeouts == [VIEWS_OPEN_TIMEOUT] and VIEWS_OPEN_TIMEOUT <= 2
    [attempt] = Notification.objects.filter(method="views.open")
    assert not attempt.ok and attempt.error.startswith("network:")
    assert not Decision.objects.exists()
    # Let the fake finish the call we gave up on, so it lands in this test's record.
    wait_for(lambda: slack.calls_to("views.open"), timeout=5)
