"""The reviewer's page says what really happened to a decided action, never a promise."""

import pytest

from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
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
    assert "<ins>" in page and "could you send us your order number?" in page

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
