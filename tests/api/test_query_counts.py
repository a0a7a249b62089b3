"""The API's hot paths, counted in queries: what an agent's submit and a reviewer's decide
cost, statement by statement, so a change that adds a round trip says so here."""

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escalations import audit
from tests.support.queries import statements

from .conftest import action_body, reply_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def warm(api, reviewer_api, policies):
    """What a running server has already cached: the policies, the prompts' rows."""
    api.post("/actions", action_body())
    first = api.post("/actions", reply_body()).json()
    reviewer_api.post(f"/escalations/{first['escalation_id']}/decision", {"verdict": "approve"})


def test_a_submit_acted_on_alone_costs_four_queries(api, warm):
    with CaptureQueriesContext(connection) as ctx:
        r = api.post("/actions", action_body())
    assert r.json()["status"] == "auto_approved"
    assert statements(ctx) == [
        "SELECT api_apitoken",  # the bearer token, with its agent
        "SELECT workflows_action",  # the idempotency key: a retry gets the first answer
        # The action, its policy outcome already decided from the cached compiled policies,
        # written only if they are current (the INSERT checks the policies' stamp).
        "INSERT workflows_action",
        "INSERT api_submittedaction",  # which token submitted it (for its status reads)
    ]


def test_an_escalated_submit_costs_five_queries(api, warm):
    with CaptureQueriesContext(connection) as ctx:
        r = api.post("/actions", reply_body())
    assert r.json()["status"] == "escalated"
    assert statements(ctx) == [
        "SELECT api_apitoken",  # the bearer token, with its agent
        "SELECT workflows_action",  # the idempotency key
        "INSERT workflows_action",  # checking the cached compiled policies' freshness
        # With the template summary, wanting the model's: no model call here; the summary
        # writer, woken after commit, finds it by its row. Its team is read along.
        "WITH escalations_escalation",
        "INSERT api_submittedaction",  # which token submitted it
    ]


def test_a_decision_through_the_api_costs_nine_queries(api, reviewer_api, warm):
    esc = api.post("/actions", reply_body()).json()
    url = f"/escalations/{esc['escalation_id']}/decision"
    with CaptureQueriesContext(connection) as ctx:
        r = reviewer_api.post(url, {"verdict": "approve"})
    assert r.json()["status"] == "approved"
    assert statements(ctx) == [
        "SELECT api_apitoken",  # the bearer token, with its reviewer
        "SELECT escalations_team",  # the reviewer's teams (access: 404 outside them)
        "SELECT escalations_escalation",  # the escalation, through that access check
        # decide_escalation checks access again, as for every channel (the action does not
        # trust its caller): one statement reads the escalation, its action and team through
        # the reviewer's teams, locks the action's run (if any) and asks whether the agent
        # takes webhooks (it does not: no outbox row, nothing more to read).
        "WITH escalations_escalation",
        # One statement: the conditional UPDATE that decides the race, the Decision, the
        # action approved.
        "WITH escalations_escalation",
        "SELECT escalations_team",  # the answer: the escalation as the reviewer sees it
        "SELECT escalations_escalation",
        "SELECT escalations_decision",
        "SELECT auth_user",  # who decided, by name
    ]


class _Draw(random.Random):
    """An audit RNG whose every draw is `value` (0.0 wins any sample, 0.999999 none)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_audit_draw_adds_no_query_to_a_submit_acted_on_alone(api, warm, settings):
    settings.AUDIT_RATE = settings.AUDIT_RATE_NEW = 0.5
    for value in (0.999999, 0.0):  # not drawn, then drawn: a reversible one is audited later
        with audit.use_rng(_Draw(value)), CaptureQueriesContext(connection) as ctx:
            r = api.post("/actions", action_body())
        assert r.json()["status"] == "auto_approved"
        assert len(statements(ctx)) == 4, statements(ctx)


def test_reporting_the_result_of_an_action_drawn_for_audit_costs_five_more_queries(
    api, warm, settings
):
    """The price of an audit of what ran alone, paid by the sampled 2% only, after it ran."""
    settings.AUDIT_RATE = settings.AUDIT_RATE_NEW = 0.5

    def report(value: float) -> list[str]:
        with audit.use_rng(_Draw(value)):
            action_id = api.post("/actions", action_body()).json()["id"]
        with CaptureQueriesContext(connection) as ctx:
            r = api.post(f"/actions/{action_id}/result", {"status": "executed", "result": {}})
        assert r.status_code == 200, r.content
        return statements(ctx)

    plain = report(0.999999)
    sampled = report(0.0)
    extra = list(sampled)
    for s in plain:
        extra.remove(s)
    assert extra == [
        "SELECT escalations_escalation",  # audited already? (a retried report opens none)
        "UPDATE workflows_action",  # the audit's reason joins the action's
        "SELECT escalations_agentprofile",  # the owner team, when the policy names none
        "WITH escalations_escalation",  # the audit, wanting its summary (see above)
    ]
