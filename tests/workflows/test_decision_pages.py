"""The reviewer's page says what really happened to a decided action, never a promise."""

from unittest import mock

import pytest

from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from workflows import engine
from workflows.actions import start_run
from workflows.models import Action, RunStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reply(inline_tasks, policies, ticket):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    return Action.objects.get(run=run, action_type="send_reply")


def _page(client, user, action):
    client.force_login(user)
    return client.get(f"/review/{action.escalation.pk}/").content.decode()


def test_an_answered_reply_links_its_revision_which_shows_the_diff_and_then_when_it_was_sent(
    inline_tasks, reply, alice, client
):
    decide_escalation(
        escalation_id=reply.escalation.pk,
        user=alice,
        verdict=Verdict.RESPOND,
        via=Via.WEB,
        reason="Ask for their order number first.",
    )
    inline_tasks.drain()
    revision = Action.objects.get(revision_of=reply)
    page = _page(client, alice, reply)
    assert ">Answered</span>" in page and "Rejected" not in page
    assert "The agent revised it" in page
    assert f"/review/{revision.escalation.pk}/" in page

    page = _page(client, alice, revision)
    assert "Revised after alice answered" in page
    assert "Ask for their order number first." in page
    # Only the line the agent added, not the whole body struck out and written again.
    added = "Before we go further, could you send us your order number?"
    assert f"<code>body</code> added: <ins>{added}</ins>" in page
    assert "<del>" not in page.split("What the agent changed")[1].split("</ul>")[0]
    # Plainly: the offline fallback wrote it, not a language model.
    offline = "This revision came from the offline fallback</strong> (Offline deterministic"
    assert offline in page
    assert "asked the customer for their order number" in page

    decide_escalation(
        escalation_id=revision.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    inline_tasks.drain()
    revision.refresh_from_db()
    assert revision.executed_at is not None
    page = _page(client, alice, revision)
    assert f'Sent at <time datetime="{revision.executed_at:%Y-%m-%dT%H:%M:%S}' in page
    assert "the run resumes" not in page
    reply.run.refresh_from_db()
    assert reply.run.status == RunStatus.SUCCEEDED


def test_a_rejected_reply_says_who_owns_the_ticket_now(inline_tasks, reply, alice, client):
    client.force_login(alice)
    response = client.post(
        f"/review/{reply.escalation.pk}/decide/",
        {"verdict": "reject", "reason": "Wrong customer"},
        follow=True,
    )
    message = "Rejected: it will not run. Next: hand the ticket to a person (you)."
    assert message in response.content.decode()
    inline_tasks.drain()
    page = _page(client, alice, reply)
    assert "Hand the ticket to a person: alice owns it" in page
    reply.run.refresh_from_db()
    assert reply.run.status == RunStatus.HANDED_OFF


def _chip(page: str) -> str:
    import re

    m = re.search(r'<span id="due-or-outcome">(.*?)</span>\s*</div>', page, re.S)
    assert m, "no due-or-outcome chip"
    return m.group(1)


def test_a_decided_reply_drops_its_sla_and_deciding_keys_and_says_what_happened(
    inline_tasks, reply, alice, client, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from escalations.models import Escalation

    Escalation.objects.filter(pk=reply.escalation.pk).update(
        sla_due_at=timezone.now() + timedelta(minutes=30)
    )
    page = _page(client, alice, reply)
    assert 'class="sla"' in _chip(page) and "<kbd>a</kbd> approve" in page

    settings.UNDO_WINDOW_SECONDS = 10
    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    page = _page(client, alice, reply)
    chip = _chip(page)
    assert "Queued: executes in" in chip and 'class="sla"' not in chip
    assert "due in" not in chip
    assert "<kbd>a</kbd> approve" not in page and "<kbd>r</kbd> reject" not in page

    inline_tasks.sent.clear()  # the resume at the window's end: the wake-up beat runs it
    engine.advance_run(run_id=reply.run_id)
    with mock.patch(
        "django.utils.timezone.now", return_value=timezone.now() + timedelta(seconds=11)
    ):
        assert engine.wake_runs() == 1
        inline_tasks.drain()
    reply.refresh_from_db()
    assert reply.executed_at is not None
    chip = _chip(_page(client, alice, reply))
    assert f'Sent at <time datetime="{reply.executed_at:%Y-%m-%dT%H:%M:%S}' in chip
