"""A summary never blocks a transaction: the escalation commits at once with the template,
wanting the model's; one writer, woken once for any number of them, writes the model's
summaries after commit, together, and pushes each live."""

import asyncio
import contextlib
import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from escalations.actions import summaries
from escalations.actions.summaries import WRITE_SUMMARIES, write_waiting_summaries
from escalations.models import Escalation
from escalations.summary import PENDING_NOTE, UNAVAILABLE_NOTE, facts
from review import live
from workflows import events, hotsql
from workflows.actions import propose_action, start_run
from workflows.llm import ModelError, ModelResult, OfflineModel
from workflows.prompts.actions import PromptError
from workflows.prompts.models import ModelCall

pytestmark = pytest.mark.django_db

REPLY = {"ticket_id": "T-1", "to": "a@example.com", "body": "Hi"}


@pytest.fixture
def triage_run(policies, ticket, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        return start_run(workflow="support_triage", input=ticket)


def propose_reply(run):
    return propose_action(
        run=run,
        step_name="propose_actions",
        action_type="send_reply",
        payload=REPLY,
        confidence=0.9,
        rationale="answer",
    )


def escalate(run, django_capture_on_commit_callbacks, sent=None):
    sent = [] if sent is None else sent
    with (
        mock.patch("workflows.outbox.send", side_effect=lambda t, a, c=0: sent.append((t, a))),
        mock.patch("escalations.summary.ask_model") as model,
        django_capture_on_commit_callbacks(execute=True),
    ):
        action = propose_reply(run)
    assert not model.called, "no model call may happen inside the escalating transaction"
    return Escalation.objects.get(action=action), sent


def open_escalations(count, ticket, django_capture_on_commit_callbacks):
    sent = []
    opened = []
    for i in range(count):
        with django_capture_on_commit_callbacks(execute=False):
            run = start_run(workflow="support_triage", input={**ticket, "subject": f"#{i}"})
        opened.append(escalate(run, django_capture_on_commit_callbacks, sent)[0])
    return opened, sent


def write(django_capture_on_commit_callbacks, **kwargs):
    heard = []
    events.subscribe("escalation.summarised", heard.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            written = write_waiting_summaries(**kwargs)
    finally:
        events._subscribers[("escalation.summarised", "after_commit")].remove(heard.append)
    return written, [e.ids["escalation_id"] for e in heard]


def summary_calls():
    return ModelCall.objects.filter(prompt_name="escalation.summary")


def test_the_escalation_commits_with_the_template_summary_wanting_the_models(
    triage_run, django_capture_on_commit_callbacks
):
    esc, sent = escalate(triage_run, django_capture_on_commit_callbacks)
    assert esc.summary.startswith("triage-agent was working on")
    assert esc.summary.endswith(PENDING_NOTE)
    assert esc.summary_wanted_at is not None
    assert not summary_calls().exists()
    # The writer is woken once the escalation committed; its row says what it must write.
    assert sent == [(WRITE_SUMMARIES, [])]


def test_the_models_summary_appears_later_and_is_pushed_live(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)
    assert write(django_capture_on_commit_callbacks) == (1, [str(esc.pk)])
    esc.refresh_from_db()
    assert not esc.summary.endswith(PENDING_NOTE)
    assert esc.summary_wanted_at is None
    assert summary_calls().filter(ok=True, run=triage_run).count() == 1
    # Written with the summaries' UPDATE in one statement: every column as the model's row.
    [call] = summary_calls()
    assert call.step_name == esc.action.step_name and call.prompt_version >= 1
    assert call.model and not call.error and call.attempts == 1
    assert call.input_tokens > 0 and call.output_tokens > 0 and call.latency_ms >= 0
    assert call.created_at is not None and call.created_at <= timezone.now()
    # Woken twice (a duplicate wake-up, beat's run): nothing left to write, no model call.
    assert write(django_capture_on_commit_callbacks) == (0, [])
    assert summary_calls().count() == 1


def test_escalations_opened_one_after_another_wake_one_writer_which_writes_them_together(
    policies, ticket, django_capture_on_commit_callbacks
):
    open_escalations(1, ticket, django_capture_on_commit_callbacks)
    # The first installs the shipped prompts (runs started from now on are pinned to them).
    assert write(django_capture_on_commit_callbacks)[0] == 1
    open_escalations(1, ticket, django_capture_on_commit_callbacks)
    with CaptureQueriesContext(connection) as one:
        assert write(django_capture_on_commit_callbacks)[0] == 1

    opened, sent = open_escalations(3, ticket, django_capture_on_commit_callbacks)
    assert sent == [(WRITE_SUMMARIES, [])], "one wake-up waits for any number of escalations"
    with CaptureQueriesContext(connection) as three:
        written, pushed = write(django_capture_on_commit_callbacks)
    assert written == 3
    assert sorted(pushed) == sorted(str(e.pk) for e in opened)
    assert summary_calls().filter(ok=True).count() == 5
    # The same statements for three as for one: the claim (the read, the lease), the runs'
    # pinned prompt versions (two), the model calls' INSERT, the fenced read, the UPDATE.
    assert len(three.captured_queries) == len(one.captured_queries)


def test_escalations_opened_in_one_transaction_wake_the_writer_once(
    policies, ticket, django_capture_on_commit_callbacks
):
    """A group round of the engine opens many escalations in one transaction: one wake-up
    after its commit, not one each (a Redis round trip each for the same flag)."""
    with django_capture_on_commit_callbacks(execute=False):
        runs = [
            start_run(workflow="support_triage", input={**ticket, "subject": f"#{i}"})
            for i in range(3)
        ]
    with (
        mock.patch("workflows.outbox.wake_drain") as wake,
        django_capture_on_commit_callbacks(execute=True),
        transaction.atomic(),
    ):
        for run in runs:
            propose_reply(run)
    assert Escalation.objects.filter(summary_wanted_at__isnull=False).count() == 3
    assert [c for c in wake.call_args_list if c == mock.call(WRITE_SUMMARIES)] == [
        mock.call(WRITE_SUMMARIES)
    ]


def test_what_commits_after_the_writer_woke_wakes_it_again(
    triage_run, policies, ticket, django_capture_on_commit_callbacks
):
    escalate(triage_run, django_capture_on_commit_callbacks)
    write(django_capture_on_commit_callbacks)
    _, sent = open_escalations(1, ticket, django_capture_on_commit_callbacks)
    assert sent == [(WRITE_SUMMARIES, [])]


def test_a_summary_another_writer_holds_is_left_to_it(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)
    [held] = summaries._claim(5, timedelta(seconds=60))
    assert write(django_capture_on_commit_callbacks) == (0, [])
    assert not summary_calls().exists()
    # The holder writes it.
    summaries._prepare([held])
    assert summaries._write([summaries._ask(OfflineModel(), held)]) == 1
    esc.refresh_from_db()
    assert not esc.summary.endswith(PENDING_NOTE)


@pytest.mark.parametrize("prepared", [True, False], ids=["postgresql", "orm"])
def test_only_summaries_still_held_are_written_and_pushed_as_the_rows_now_are(
    prepared, policies, ticket, billing, django_capture_on_commit_callbacks
):
    """The write's fence, in its prepared statement and through the ORM (embedded mode):
    a summary whose lease another writer holds now is not written; one whose escalation
    moved since it was claimed is pushed to the team it is with now."""
    open_escalations(2, ticket, django_capture_on_commit_callbacks)
    moved, taken = summaries._claim(5, timedelta(seconds=60))
    Escalation.objects.filter(pk=moved.escalation.pk).update(team=billing)
    later = timezone.now() + timedelta(minutes=5)
    Escalation.objects.filter(pk=taken.escalation.pk).update(summary_wanted_at=later)
    done = [summaries._ask(OfflineModel(), s) for s in summaries._prepare([moved, taken])]
    heard = []
    events.subscribe("escalation.summarised", heard.append)
    try:
        with (
            mock.patch.object(hotsql, "enabled", return_value=prepared),
            django_capture_on_commit_callbacks(execute=True),
        ):
            assert summaries._write(done) == 1
    finally:
        events._subscribers[("escalation.summarised", "after_commit")].remove(heard.append)
    assert [(e.ids["escalation_id"], e.ids["team_id"]) for e in heard] == [
        (str(moved.escalation.pk), billing.pk)
    ]
    moved.escalation.refresh_from_db()
    assert moved.escalation.summary == moved.text and moved.escalation.summary_wanted_at is None
    assert moved.text.split()[0].lower() in moved.escalation.search_text
    taken.escalation.refresh_from_db()
    assert taken.escalation.summary.endswith(PENDING_NOTE)
    assert taken.escalation.summary_wanted_at == later
    # Both calls were made: both are recorded.
    assert summary_calls().count() == 2


def test_a_writer_that_died_leaves_its_summaries_to_the_next_once_its_lease_ends(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)
    [dead] = summaries._claim(5, timedelta(seconds=60))
    later = timezone.now() + timedelta(seconds=61)
    with mock.patch("escalations.actions.summaries.timezone.now", return_value=later):
        assert write(django_capture_on_commit_callbacks) == (1, [str(esc.pk)])
    # The dead writer's lease is not the row's any more: were it to wake, it writes nothing
    # (its model call is still recorded: it was made).
    summaries._prepare([dead])
    dead = summaries._ask(OfflineModel(), dead)
    assert summaries._write([dead]) == 0
    assert summary_calls().count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_summary_whose_row_something_else_holds_locked_is_waited_for_not_skipped(
    policies, ticket
):
    """A decision (or the SLA timer) holding the escalation's row while the writer claims:
    skipped, the summary would wait for beat, since this writer was its wake-up."""
    with mock.patch("workflows.outbox.send"):
        run = start_run(workflow="support_triage", input=ticket)
        esc = Escalation.objects.get(action=propose_reply(run))
    locked, release = threading.Event(), threading.Event()

    def hold_the_row():
        with transaction.atomic():
            Escalation.objects.select_for_update().get(pk=esc.pk)
            locked.set()
            release.wait(30)
        connections.close_all()

    written = []

    def writer():
        written.append(write_waiting_summaries())
        connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(30)
    claimer = threading.Thread(target=writer)
    claimer.start()
    # Release only once the writer waits on the row lock (it would have skipped it).
    for _ in range(600):
        with connection.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            if cur.fetchone()[0]:
                break
        time.sleep(0.05)
    else:
        release.set()
        raise AssertionError("the writer never waited for the row")
    release.set()
    holder.join(30)
    claimer.join(30)
    assert written == [1]
    esc.refresh_from_db()
    assert not esc.summary.endswith(PENDING_NOTE)


def test_the_summary_falls_back_to_the_template_when_the_model_fails(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)

    class Down(OfflineModel):
        def generate(self, **kwargs):
            raise ModelError("503 from the model server; giving up")

    with mock.patch("escalations.actions.summaries.get_model", return_value=Down()):
        assert write(django_capture_on_commit_callbacks)[0] == 1
    esc.refresh_from_db()
    assert esc.summary.endswith(UNAVAILABLE_NOTE)
    assert esc.summary_wanted_at is None
    assert summary_calls().filter(ok=False, error__contains="503").count() == 1


def test_a_summary_the_model_cannot_be_asked_for_still_ends(
    triage_run, django_capture_on_commit_callbacks
):
    esc, _ = escalate(triage_run, django_capture_on_commit_callbacks)
    with mock.patch(
        "escalations.actions.summaries.render", side_effect=PromptError("needs 'ticket'")
    ):
        assert write(django_capture_on_commit_callbacks)[0] == 1
    esc.refresh_from_db()
    assert esc.summary.endswith(UNAVAILABLE_NOTE)
    assert esc.summary_wanted_at is None
    assert not summary_calls().exists()


class SlowRemoteModel:
    """A model whose every call waits until `together` calls are in flight at once: the
    batch passes only if its calls overlap (one after another, the first would wait out the
    barrier and fail)."""

    label = name = "slow-remote"
    offline = False

    def __init__(self, together: int) -> None:
        self.barrier = threading.Barrier(together, timeout=10)
        self.threads: set[str] = set()

    def generate(self, *, prompt, schema, extra_messages=None):
        self.threads.add(threading.current_thread().name)
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise ModelError("the calls did not overlap") from None
        data = {"summary": f"the model's summary of {prompt.variables['doing']}"}
        return ModelResult(data=data, raw=str(data), model=self.name, latency_ms=2000.0)


def test_a_remote_models_calls_overlap_in_a_bounded_pool(
    policies, ticket, django_capture_on_commit_callbacks
):
    opened, _ = open_escalations(4, ticket, django_capture_on_commit_callbacks)
    model = SlowRemoteModel(together=4)
    with (
        mock.patch("escalations.actions.summaries.get_model", return_value=model),
        mock.patch.object(settings, "SUMMARY_CONCURRENCY", 4),
    ):
        assert write(django_capture_on_commit_callbacks)[0] == 4
    for esc in opened:
        esc.refresh_from_db()
        assert esc.summary.startswith("the model's summary of"), esc.summary
    assert len(model.threads) == 4
    assert summary_calls().filter(ok=True, model="slow-remote").count() == 4


def test_the_writer_runs_in_the_model_pool_where_a_model_server_is_configured():
    from workflows import outbox

    with mock.patch.object(settings, "MODEL_STEPS_ALONE", True):
        assert outbox._queue_for(WRITE_SUMMARIES) == settings.CELERY_MODEL_QUEUE
    with mock.patch.object(settings, "MODEL_STEPS_ALONE", False):
        assert outbox._queue_for(WRITE_SUMMARIES) is None


def test_beat_runs_the_writer_as_the_safety_net():
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert WRITE_SUMMARIES in tasks


def test_summary_facts_come_from_the_steps_the_workflow_declares(triage_run):
    run = triage_run
    run.state = {
        "workspace": {
            "outputs": {
                "classify": {"uncertain_about": "which plan they are on"},
                "draft_reply": {"uncertain_about": "the refund window"},
                "not_declared": {"uncertain_about": "never quoted"},
            }
        }
    }
    action = propose_reply(run)
    assert facts(action, [])["unsure"] == "which plan they are on; the refund window"


@pytest.mark.django_db(transaction=True)
def test_the_writers_summaries_reach_an_open_queue_each_in_the_order_written(policies, ticket):
    """Through the Redis layer, as a daphne process's hub hears them: the writer's batch is
    pushed as one burst after its commit, and the hub hands each change to its pages."""
    with mock.patch("workflows.outbox.send"):
        opened = sorted(
            Escalation.objects.get(
                action=propose_reply(
                    start_run(workflow="support_triage", input={**ticket, "subject": f"#{i}"})
                )
            ).pk
            for i in range(3)
        )
    assert live._publisher().wait(5), "the escalations' own pushes went first"
    heard: list[dict] = []

    class Page:
        def deliver(self, message):
            heard.append(message)

    async def scenario():
        hub = live.QueueHub()
        await hub.join(Page())
        assert await sync_to_async(write_and_close, thread_sensitive=False)() == 3
        for _ in range(100):
            if len(heard) >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # nothing more comes
        hub._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hub._task

    def write_and_close():
        try:
            return write_waiting_summaries()
        finally:
            connections.close_all()

    async_to_sync(scenario)()
    assert [m["id"] for m in heard] == [str(pk) for pk in opened]
    assert all(m["type"] == "escalation.changed" and m["teams"] for m in heard)
    assert len({m["seq"] for m in heard}) == 3


def test_an_escalation_sent_through_the_api_without_a_run_is_summarised(
    policies, agent, django_capture_on_commit_callbacks
):
    """Its action has no run: the writer reads it all the same (the run is optional in the
    claim's read) and its facts say where the request came from."""
    from api.actions import create_api_token, submit_action

    token, _ = create_api_token(agent=agent)
    with django_capture_on_commit_callbacks(execute=False):
        action, _ = submit_action(
            token=token,
            action_type="send_reply",
            payload=REPLY,
            confidence=0.9,
            idempotency_key="k",
        )
    esc = Escalation.objects.get(action=action)
    assert action.run_id is None and esc.summary_wanted_at is not None
    seen = []
    real_facts = summaries.facts
    with mock.patch.object(
        summaries, "facts", side_effect=lambda a, r: seen.append(real_facts(a, r)) or seen[-1]
    ):
        assert write(django_capture_on_commit_callbacks) == (1, [str(esc.pk)])
    assert [f["doing"] for f in seen] == ["a request sent via API"]
    esc.refresh_from_db()
    assert not esc.summary.endswith(PENDING_NOTE) and esc.summary_wanted_at is None
    assert summary_calls().filter(ok=True, run=None).count() == 1
