"""Signed webhooks to a small HTTP receiver on loopback: signature, retries, re-sends."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from api.actions import attempt_webhook_delivery, create_api_token, submit_action
from api.models import AgentWebhook, DeliveryStatus, WebhookAttempt, WebhookDelivery
from caliber_client import InvalidSignature, verify_signature, verify_webhook
from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from tests.conftest import _service_env, _stop, wait_for
from tests.support import processes

REPLY = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refunded, sorry."}


class Receiver:
    """Records every POST; answers `fail_first` of them with 500, the rest with 204."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/caliber"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=1)
    yield r
    r.close()


@pytest.fixture
def webhook(agent, receiver) -> AgentWebhook:
    return AgentWebhook.objects.create(agent=agent, url=receiver.url)


def _escalated_action(agent):
    token, _ = create_api_token(agent=agent)
    action, _ = submit_action(
        token=token, action_type="send_reply", payload=REPLY, confidence=0.9, idempotency_key="k"
    )
    return action


@pytest.fixture
def own_worker(transactional_db, worker_log_dir):
    """A real `celery worker` process for this test only. The session's shared worker would
    stay up for every later test, where other suites' teardown flushes race its tasks."""
    proc = processes.start_worker(
        env=_service_env(),
        log_path=worker_log_dir / "api-worker.log",
        pool="solo",
        concurrency=None,
        timeout=60,
    )
    try:
        yield proc
    finally:
        _stop(proc)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_decision_is_delivered_signed_and_retried_until_it_lands(
    own_worker, agent, policies, webhook, receiver, alice
):
    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk,
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Wrong customer",
    )
    wait_for(lambda: len(receiver.requests) >= 2, timeout=30)
    delivery = wait_for(
        lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.DELIVERED).first()
    )
    assert delivery.attempts == 2
    codes = list(delivery.tries.values_list("status_code", flat=True))
    assert codes == [500, 204]
    (_, first_body), (headers, body) = receiver.requests
    # The same event both times (receivers deduplicate on its id), each attempt signed anew.
    assert first_body == body
    event = verify_webhook(secret=webhook.secret, body=body, headers=headers)
    assert event["event"] == "action.decided"
    assert event["action"]["id"] == str(action.pk)
    assert event["action"]["status"] == "rejected"
    assert event["action"]["reason"] == "Wrong customer"
    assert event["action"]["decided_by"] == "alice"
    assert headers["Caliber-Delivery"] == str(delivery.pk)


@pytest.mark.django_db
def test_a_forged_or_stale_signature_is_refused(agent, policies, webhook, receiver, alice):
    receiver.fail_first = 0
    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.API
    )
    delivery = WebhookDelivery.objects.get()
    assert attempt_webhook_delivery(delivery_id=delivery.pk) is None
    headers, body = receiver.requests[0]
    verify_webhook(secret=webhook.secret, body=body, headers=headers)
    with pytest.raises(InvalidSignature):
        verify_webhook(secret="whsec_wrong", body=body, headers=headers)
    with pytest.raises(InvalidSignature):
        forged = body.replace(b"approve", b"reject")
        verify_webhook(secret=webhook.secret, body=forged, headers=headers)
    with pytest.raises(InvalidSignature, match="old"):
        verify_signature(
            secret=webhook.secret,
            body=body,
            timestamp=headers["Caliber-Timestamp"],
            signature=headers["Caliber-Signature"],
            now=time.time() + 3600,
        )
    with pytest.raises(InvalidSignature):
        verify_webhook(secret=webhook.secret, body=body, headers={})


@pytest.mark.django_db
def test_an_unreachable_receiver_is_retried_on_the_delivery_policy_then_given_up(
    agent, policies, alice
):
    from workflows.models import Outbox
    from workflows.retry import DELIVERY

    dead = Receiver()
    url = dead.url
    dead.close()
    AgentWebhook.objects.create(agent=agent, url=url)
    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    delivery = WebhookDelivery.objects.get()
    tries = DELIVERY.max_attempts
    Outbox.objects.all().delete()
    with mock.patch("workflows.retry.random.uniform", return_value=1.0):  # no jitter
        delays = [attempt_webhook_delivery(delivery_id=delivery.pk) for _ in range(tries - 1)]
        assert attempt_webhook_delivery(delivery_id=delivery.pk) is None
    assert delays == [2, 4, 8, 16, 32, 64, 128]
    # Each retry is an outbox row written with the failed attempt, due when the policy says.
    retries = list(Outbox.objects.order_by("id"))
    assert [r.task for r in retries] == ["api.tasks.deliver_webhook"] * (tries - 1)
    assert [round((r.available_at - r.created_at).total_seconds()) for r in retries] == delays
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == tries
    assert all(a.error and a.status_code is None for a in WebhookAttempt.objects.all())
    # Done is done: another task for it changes nothing.
    assert attempt_webhook_delivery(delivery_id=delivery.pk) is None
    assert WebhookAttempt.objects.count() == tries


@pytest.mark.django_db
def test_a_failed_delivery_is_resent_from_the_admin(
    client,
    admin_user,
    agent,
    policies,
    webhook,
    receiver,
    alice,
    django_capture_on_commit_callbacks,
):
    receiver.fail_first = 0
    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    original = WebhookDelivery.objects.get()
    WebhookDelivery.objects.filter(pk=original.pk).update(status=DeliveryStatus.FAILED)
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False):
        client.post(
            "/admin/api/webhookdelivery/",
            {"action": "resend", "_selected_action": [original.pk]},
        )
    copy = WebhookDelivery.objects.exclude(pk=original.pk).get()
    assert copy.resend_of == original
    assert copy.event_id == original.event_id and copy.body == original.body
    assert attempt_webhook_delivery(delivery_id=copy.pk) is None
    copy.refresh_from_db()
    assert copy.status == DeliveryStatus.DELIVERED
    assert json.loads(receiver.requests[0][1])["id"] == str(original.event_id)
    page = client.get(f"/admin/api/webhookdelivery/{copy.pk}/change/")
    assert page.status_code == 200


@pytest.mark.django_db
def test_only_decisions_of_agents_with_an_enabled_webhook_are_sent(
    agent, policies, alice, receiver
):
    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    assert not WebhookDelivery.objects.exists()
    AgentWebhook.objects.create(agent=agent, url=receiver.url, enabled=False)
    token, _ = create_api_token(agent=agent)
    other, _ = submit_action(
        token=token, action_type="send_reply", payload=REPLY, confidence=0.9, idempotency_key="k2"
    )
    decide_escalation(
        escalation_id=other.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_a_delivery_whose_task_was_lost_is_found_by_the_sweep(agent, policies, webhook, alice):
    from datetime import timedelta

    from django.utils import timezone

    from api.actions import requeue_stalled_deliveries

    action = _escalated_action(agent)
    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    assert requeue_stalled_deliveries() == 0
    later = timezone.now() + timedelta(minutes=5)
    assert requeue_stalled_deliveries(now=later) == 1
    WebhookDelivery.objects.update(status=DeliveryStatus.DELIVERED)
    assert requeue_stalled_deliveries(now=later) == 0
