"""A person's decision jumps the queue: its resume goes to the priority queue, which every
worker consumes first. Ordering, not wall time: a thousand steps are queued on the broker,
then decisions; a consumer set up as a worker is receives the decisions' resumes first."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Consumer, Queue

from config.celery import app
from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from workflows.actions import start_run
from workflows.models import Action, RunStatus, WorkflowRun
from workflows.outbox import ADVANCE, DRAIN_RESUMES

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def test_every_way_of_starting_a_worker_consumes_the_priority_queue_first():
    # Scale-out: supervisord's workers take the queues `serve` lists, the priority one first.
    supervised = (ROOT / "config" / "supervisord.conf").read_text()
    assert "-Q %(ENV_CALIBER_WORKER_QUEUES)s" in supervised
    serve = (ROOT / "workflows" / "management" / "commands" / "serve.py").read_text()
    assert "                    settings.CELERY_PRIORITY_QUEUE,\n" in serve
    # ... and the resumer takes only the priority queue.
    assert "-Q %(ENV_CALIBER_PRIORITY_QUEUE)s -n resumer@" in supervised
    assert "CALIBER_PRIORITY_QUEUE=settings.CELERY_PRIORITY_QUEUE," in serve
    embedded = (ROOT / "workflows" / "embedded.py").read_text()
    assert (
        "queues=[\n                settings.CELERY_PRIORITY_QUEUE,\n"
        "                settings.CELERY_TASK_DEFAULT_QUEUE,\n"
    ) in embedded
    processes = (ROOT / "tests" / "support" / "processes.py").read_text()
    assert 'queues = f"{queue}-priority,{queue},{queue}-model"' in processes
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    assert default + "-priority" == settings.CELERY_PRIORITY_QUEUE
    # Redis: BRPOP on the queues in the order the worker lists them, never rotated.
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["queue_order_strategy"] == "priority"
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    # With late acks a running task holds its prefetch slot until it is done, so a worker
    # whose children are all busy reserves nothing more: no ordinary step waits in the
    # worker ahead of a decision's resume (acked early, each child would hold one more).
    assert settings.CELERY_TASK_ACKS_LATE is True


def test_decisions_are_resumed_before_a_thousand_queued_steps(
    inline_tasks, policies, ticket, alice
):
    runs = []
    for i in range(2):
        run = start_run(workflow="support_triage", input={**ticket, "ticket_id": f"T-{i}"})
        runs.append(run)
    inline_tasks.drain()
    inline_tasks.sent.clear()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING
        reply = Action.objects.get(run=run, action_type="send_reply")
        decide_escalation(
            escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    decisions = [(task, args) for _, task, args in inline_tasks.sent]
    # Both runs marked ready in their deciding transactions; one drain woken for both.
    assert decisions == [(DRAIN_RESUMES, [])]
    ready = WorkflowRun.objects.filter(pk__in=[r.pk for r in runs], ready_at__isnull=False)
    assert ready.count() == 2

    # The broker, as a worker sees it: own queue names, so no running worker takes these.
    base = f"order-test-{uuid.uuid4().hex[:8]}"
    priority = f"{base}-priority"
    router = app.amqp.router

    def queue_for(task: str) -> str:
        routed = router.route({}, task)["queue"].name
        assert routed in (settings.CELERY_PRIORITY_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE)
        return priority if routed == settings.CELERY_PRIORITY_QUEUE else base

    with app.connection_for_write() as conn:
        producer = app.amqp.Producer(conn)
        for i in range(1000):
            app.send_task(ADVANCE, args=[f"step-{i}"], queue=queue_for(ADVANCE), producer=producer)
        for task, args in decisions:
            app.send_task(task, args=args, queue=queue_for(task), producer=producer)

    received: list[tuple[str, list[str]]] = []
    try:
        with app.connection_for_read() as conn:

            def on_message(body, message):
                received.append((message.headers["task"], list(body[0])))
                message.ack()

            # The worker's -Q order: priority first. One message at a time, as a worker child
            # with prefetch 1 and late acks takes them.
            queues = [Queue(priority, routing_key=priority), Queue(base, routing_key=base)]
            with Consumer(
                conn.default_channel,
                queues=queues,
                callbacks=[on_message],
                accept=["json"],
                prefetch_count=1,
            ):
                while len(received) < len(decisions) + 2:
                    conn.drain_events(timeout=5)
    finally:
        with app.connection_for_write() as conn:
            for name in (base, priority):
                conn.default_channel.queue_purge(name)
                conn.default_channel.queue_delete(name)
    # The decisions' drain first, then the steps in the order they were queued.
    assert received == [*decisions, (ADVANCE, ["step-0"]), (ADVANCE, ["step-1"])]
