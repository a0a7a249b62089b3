import uuid

import pytest

from workflows.models import Outcome, OutcomeSource, WorkflowRun

from .conftest import action_body

pytestmark = pytest.mark.django_db


def test_an_agent_starts_a_run_of_its_workflow_and_reads_it(api, policies, ticket):
    r = api.post("/runs", {"workflow": "support_triage", "input": ticket})
    assert r.status_code == 201, r.content
    run = r.json()
    assert run["workflow"] == "support_triage"
    assert run["status"] == "pending"
    assert run["input"] == ticket
    got = api.get(f"/runs/{run['id']}")
    assert got.status_code == 200
    assert got.json()["id"] == run["id"]


def test_an_unknown_workflow_is_422(api, policies):
    r = api.post("/runs", {"workflow": "nope", "input": {}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "workflow"]
    assert not WorkflowRun.objects.exists()


def test_a_workflow_of_another_agent_is_403(outsider_api, policies, agent, ticket):
    r = outsider_api.post("/runs", {"workflow": "support_triage", "input": ticket})
    assert r.status_code == 403
    assert not WorkflowRun.objects.exists()


def test_another_agents_run_is_404(api, outsider_api, policies, ticket):
    run = api.post("/runs", {"workflow": "support_triage", "input": ticket}).json()
    assert outsider_api.get(f"/runs/{run['id']}").status_code == 404
    assert api.get(f"/runs/{uuid.uuid4()}").status_code == 404


def test_an_outcome_is_recorded_against_an_action(api, policies, agent_token):
    action = api.post("/actions", action_body()).json()
    r = api.post(
        "/outcomes",
        {"action_id": action["id"], "metric": "customer_replied", "quality": "good", "value": 1},
    )
    assert r.status_code == 201, r.content
    outcome = Outcome.objects.get()
    assert str(outcome.action_id) == action["id"]
    assert outcome.source == OutcomeSource.API
    assert outcome.recorded_by == agent_token[0].actor


def test_an_outcome_is_recorded_against_a_run(api, policies, ticket):
    run = api.post("/runs", {"workflow": "support_triage", "input": ticket}).json()
    r = api.post("/outcomes", {"run_id": run["id"], "metric": "resolved", "quality": "neutral"})
    assert r.status_code == 201
    assert str(Outcome.objects.get().run_id) == run["id"]


def test_an_outcome_needs_a_subject_a_known_quality_and_the_agents_own_action(
    api, outsider_api, policies
):
    assert api.post("/outcomes", {"metric": "m", "quality": "good"}).status_code == 422
    action = api.post("/actions", action_body()).json()
    bad_quality = {"action_id": action["id"], "metric": "m", "quality": "great"}
    assert api.post("/outcomes", bad_quality).status_code == 422
    theirs = {"action_id": action["id"], "metric": "m", "quality": "good"}
    assert outsider_api.post("/outcomes", theirs).status_code == 404
    assert not Outcome.objects.exists()


def test_a_retried_start_with_the_same_key_is_the_same_run(api, policies, ticket):
    body = {"workflow": "support_triage", "input": ticket, "idempotency_key": "ticket-T-1"}
    first = api.post("/runs", body)
    again = api.post("/runs", body)
    assert first.status_code == 201, first.content
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert WorkflowRun.objects.count() == 1


def test_the_same_key_with_another_input_is_409_and_starts_nothing(api, policies, ticket):
    body = {"workflow": "support_triage", "input": ticket, "idempotency_key": "ticket-T-1"}
    assert api.post("/runs", body).status_code == 201
    other = {**body, "input": {**ticket, "subject": "Something else"}}
    r = api.post("/runs", other)
    assert r.status_code == 409
    assert "idempotency key" in r.json()["detail"]
    assert WorkflowRun.objects.count() == 1


def test_keys_are_per_agent(api, policies, ticket):
    from workflows.actions import start_run

    # A run started elsewhere (a command, a follow-up) under the same raw key is not this one.
    start_run(workflow="support_triage", input=ticket, idempotency_key="k-1")
    r = api.post("/runs", {"workflow": "support_triage", "input": ticket, "idempotency_key": "k-1"})
    assert r.status_code == 201
    assert WorkflowRun.objects.count() == 2


def test_input_that_does_not_fit_the_workflows_schema_is_422_and_starts_nothing(
    api, policies, ticket
):
    del ticket["customer"]
    r = api.post("/runs", {"workflow": "support_triage", "input": {**ticket, "subject": "  "}})
    assert r.status_code == 422, r.content
    locs = sorted(tuple(e["loc"]) for e in r.json()["detail"])
    assert locs == [("body", "input", "customer"), ("body", "input", "subject")]
    assert all(e["msg"] for e in r.json()["detail"])
    assert not WorkflowRun.objects.exists()
    from workflows.models import Outbox

    assert not Outbox.objects.exists()


def test_the_input_schema_is_checked_for_every_workflow(api, policies):
    from workflows.actions import start_run
    from workflows.specs import InvalidInput

    with pytest.raises(InvalidInput, match="company"):
        start_run(workflow="mention_research", input={"company": "", "as_of": "yesterday"})
    assert not WorkflowRun.objects.exists()


def test_a_send_failing_after_commit_still_answers_201_for_the_committed_run(
    api, policies, ticket, monkeypatch
):
    """The send after commit fails (the broker gone): the run exists and an outbox row now
    waits for beat, so the answer must be the run, not a 500."""
    from workflows import outbox
    from workflows.models import Outbox

    def broker_gone(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to the broker")

    monkeypatch.setattr(outbox, "send", broker_gone)
    body = {"workflow": "support_triage", "input": ticket, "idempotency_key": "k-2"}
    with api_capturing_commits():
        r = api.post("/runs", body)
    assert r.status_code == 201, r.content
    assert WorkflowRun.objects.filter(pk=r.json()["id"]).exists()
    assert Outbox.objects.count() == 1  # beat's relay sends it


def api_capturing_commits():
    from django.test import TestCase

    return TestCase.captureOnCommitCallbacks(execute=True)


def test_an_outside_event_is_delivered_to_a_run_once_per_key(api, policies, ticket):
    run = api.post("/runs", {"workflow": "support_triage", "input": ticket}).json()
    body = {
        "kind": "customer_replied",
        "data": {"text": "Still charged twice!"},
        "idempotency_key": "mail-42",
    }
    r = api.post(f"/runs/{run['id']}/events", body)
    assert r.status_code == 202, r.content
    assert r.json() == {
        "run_id": run["id"],
        "kind": "customer_replied",
        "woke": 0,
        "duplicate": False,
    }
    again = api.post(f"/runs/{run['id']}/events", body)
    assert again.json()["duplicate"] is True
    state = WorkflowRun.objects.get(pk=run["id"]).state
    assert [e["key"] for e in state["workspace"]["events"]] == ["mail-42"]
    assert state["conversation"]["messages"][-1]["content"] == "Still charged twice!"


def test_a_bad_event_is_422_and_another_agents_run_is_404(api, outsider_api, policies, ticket):
    run = api.post("/runs", {"workflow": "support_triage", "input": ticket}).json()
    no_text = api.post(f"/runs/{run['id']}/events", {"kind": "customer_replied", "data": {}})
    assert no_text.status_code == 422
    assert no_text.json()["detail"][0]["loc"] == ["body", "data"]
    bad_kind = api.post(f"/runs/{run['id']}/events", {"kind": "Customer Replied!"})
    assert bad_kind.status_code == 422
    other = outsider_api.post(f"/runs/{run['id']}/events", {"kind": "payment_cleared"})
    assert other.status_code == 404
    assert "events" not in WorkflowRun.objects.get(pk=run["id"]).state["workspace"]
