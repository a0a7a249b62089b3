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
