import json
import threading
import uuid

import pytest
from django.db import connection

from api.actions import submit_action
from api.models import SubmittedAction
from escalations.models import AutonomyPolicy, Escalation, EscalationStatus
from workflows.models import Action, ActionStatus, Effect, PolicyOutcome

from .conftest import action_body, reply_body

pytestmark = pytest.mark.django_db


def test_a_confident_crm_update_is_approved_at_once(api, policies):
    r = api.post("/actions", action_body())
    assert r.status_code == 201, r.content
    data = r.json()
    assert data["status"] == "auto_approved"
    assert data["decided"] is True
    assert data["decision"]["outcome"] == "auto"
    assert data["decision"]["policy_version"] == 1
    assert data["escalation_id"] is None
    action = Action.objects.get(pk=data["id"])
    assert action.run is None
    assert action.status == ActionStatus.AUTO_APPROVED


def test_a_customer_reply_is_escalated_to_the_policys_team(api, policies, support):
    r = api.post("/actions", reply_body(summary="Tell Ada her refund is on its way"))
    assert r.status_code == 201
    data = r.json()
    assert data["status"] == "escalated"
    assert data["decided"] is False
    escalation = Escalation.objects.get(pk=data["escalation_id"])
    assert escalation.team == support
    assert escalation.status == EscalationStatus.OPEN
    assert any("irreversible" in reason for reason in data["decision"]["reasons"])
    # The reviewer reads the agent's own summary beside the policy's reasons.
    assert escalation.action.rationale == "Tell Ada her refund is on its way"


def test_a_blocking_policy_blocks(api, policies, agent):
    AutonomyPolicy.objects.create(
        name="no crm", agent=agent, action_type="update_crm", outcome=PolicyOutcome.BLOCK
    )
    r = api.post("/actions", action_body())
    assert r.status_code == 201
    assert r.json()["status"] == "blocked"
    assert not Escalation.objects.exists()


def test_an_action_no_policy_covers_goes_to_review(api, agent):
    r = api.post("/actions", action_body())
    assert r.json()["status"] == "escalated"


def test_the_same_idempotency_key_returns_the_same_action(api, policies):
    body = reply_body()
    first = api.post("/actions", body)
    again = api.post("/actions", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Action.objects.count() == 1
    assert Escalation.objects.count() == 1


def test_reusing_a_key_for_a_different_payload_is_a_conflict(api, policies):
    body = action_body()
    api.post("/actions", body)
    r = api.post("/actions", {**body, "payload": {"ticket_id": "T-2"}})
    assert r.status_code == 409
    assert "idempotency key" in r.json()["detail"]
    assert Action.objects.count() == 1


def test_two_agents_may_use_the_same_key(api, outsider_api, policies):
    key = "same-key"
    assert api.post("/actions", action_body(idempotency_key=key)).status_code == 201
    other = action_body(agent="billing-bot", idempotency_key=key)
    assert outsider_api.post("/actions", other).status_code == 201
    assert Action.objects.count() == 2


def test_a_token_submits_only_for_its_own_agent(outsider_api, policies):
    r = outsider_api.post("/actions", action_body(agent="triage-agent"))
    assert r.status_code == 403
    assert "billing-bot" in r.json()["detail"]
    assert not Action.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action_type": "wire_money"}, "action_type"),
        ({"confidence": 1.5}, "confidence"),
        ({"confidence": -0.1}, "confidence"),
        ({"confidence": "high"}, "confidence"),
        ({"payload": ["not", "an", "object"]}, "payload"),
        ({"payload": {"priority": "high"}}, "payload"),  # ticket_id is required
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 151}, "idempotency_key"),
        ({"payload": {"ticket_id": "T\u00001"}}, "payload"),
        ({"summary": "nul\u0000"}, "summary"),
        ({"amount": 1.234}, "amount"),
    ],
)
def test_bad_fields_are_422_naming_the_field_and_write_nothing(api, policies, change, field):
    r = api.post("/actions", action_body(**change))
    assert r.status_code == 422, r.content
    assert field in [str(part) for error in r.json()["detail"] for part in error["loc"]]
    assert not Action.objects.exists()


def test_a_missing_field_is_named(api, policies):
    body = action_body()
    del body["idempotency_key"]
    r = api.post("/actions", body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][-1] == "idempotency_key"


def test_json_that_postgres_cannot_store_is_refused(api, policies):
    raw = json.dumps(action_body()).replace('"high"', "NaN").encode()
    assert api.post("/actions", raw=raw).status_code == 400
    raw = json.dumps(action_body()).replace('"high"', "1e999").encode()
    assert api.post("/actions", raw=raw).status_code == 422
    raw = json.dumps(action_body()).replace('"high"', '"\\ud800"').encode()
    assert api.post("/actions", raw=raw).status_code == 422
    assert api.post("/actions", raw=b"{not json").status_code == 400
    assert not Action.objects.exists()


def test_a_body_over_the_limit_is_413_before_parsing(api, policies):
    from api.views import max_body_bytes

    huge = action_body(payload={"ticket_id": "T-1", "notes": "x" * max_body_bytes()})
    r = api.post("/actions", huge)
    assert r.status_code == 413
    assert not Action.objects.exists()


def test_the_limit_is_api_max_body_bytes_and_the_refusal_is_the_apis_json_error(
    api, policies, settings
):
    settings.API_MAX_BODY_BYTES = 2048
    small = action_body(payload={"ticket_id": "T-1", "to": "a@example.com", "body": "x" * 1500})
    assert len(json.dumps(small)) < 2048
    assert api.post("/actions", small).status_code == 201
    big = action_body(payload={"ticket_id": "T-2", "to": "a@example.com", "body": "x" * 2100})
    r = api.post("/actions", big)
    assert r.status_code == 413
    assert r.json() == {"detail": "The body is larger than 2048 bytes."}
    assert Action.objects.count() == 1


def test_a_body_over_the_limit_is_413_even_without_a_valid_token(client, policies):
    from api.views import max_body_bytes

    r = client.post(
        "/api/v1/actions", b"x" * (max_body_bytes() + 1), content_type="application/json"
    )
    assert r.status_code == 413


def test_an_agent_marking_a_reversible_call_irreversible_is_believed(api, policies):
    r = api.post("/actions", action_body(reversible=False))
    assert r.json()["status"] == "escalated"
    assert "irreversible" in r.json()["decision"]["reasons"][0]


def test_an_agent_cannot_talk_an_irreversible_type_into_acting_alone(api, policies):
    r = api.post("/actions", reply_body(reversible=True, confidence=0.99))
    assert r.json()["status"] == "escalated"


def test_amount_and_context_are_kept_for_the_reviewer(api, policies):
    r = api.post("/actions", action_body(amount="120.50", context={"thread": ["hi"]}))
    data = r.json()
    assert data["amount"] == "120.50" or float(data["amount"]) == 120.5
    assert data["context"] == {"thread": ["hi"]}
    submission = SubmittedAction.objects.get(action_id=data["id"])
    assert str(submission.amount) == "120.50"


# --- reading ------------------------------------------------------------------------------


def test_an_agent_reads_its_action(api, policies):
    created = api.post("/actions", reply_body()).json()
    r = api.get(f"/actions/{created['id']}")
    assert r.status_code == 200
    assert r.json()["status"] == "escalated"
    assert r.json()["verdict"] is None


def test_another_agents_action_is_404(api, outsider_api, policies):
    created = api.post("/actions", action_body()).json()
    assert outsider_api.get(f"/actions/{created['id']}").status_code == 404
    assert api.get(f"/actions/{uuid.uuid4()}").status_code == 404


def test_a_wait_out_of_range_is_422(api, policies):
    created = api.post("/actions", action_body()).json()
    assert api.get(f"/actions/{created['id']}", wait=61).status_code == 422
    assert api.get(f"/actions/{created['id']}", wait=-1).status_code == 422


def test_a_short_wait_on_an_undecided_action_returns_it_undecided(api, policies):
    created = api.post("/actions", reply_body()).json()
    r = api.get(f"/actions/{created['id']}", wait=0.2)
    assert r.status_code == 200
    assert r.json()["decided"] is False


# --- results -------------------------------------------------------------------------------


def test_the_agent_reports_the_result_of_an_approved_action(api, policies):
    created = api.post("/actions", action_body()).json()
    result = {"crm_record": "T-1"}
    r = api.post(f"/actions/{created['id']}/result", {"status": "executed", "result": result})
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "executed"
    assert r.json()["result"] == result
    assert Effect.objects.get(action_id=created["id"]).result == result
    # A retried report changes nothing; a different one is refused.
    again = api.post(f"/actions/{created['id']}/result", {"status": "executed", "result": result})
    assert again.status_code == 200
    other = api.post(f"/actions/{created['id']}/result", {"status": "failed", "error": "boom"})
    assert other.status_code == 409
    assert Effect.objects.count() == 1


def test_a_run_may_be_reported_without_a_result(api, policies):
    created = api.post("/actions", action_body()).json()
    r = api.post(f"/actions/{created['id']}/result", {"status": "executed"})
    assert r.status_code == 200
    assert r.json()["result"] == {}


def test_a_failure_needs_an_error(api, policies):
    created = api.post("/actions", action_body()).json()
    r = api.post(f"/actions/{created['id']}/result", {"status": "failed"})
    assert r.status_code == 422
    r = api.post(f"/actions/{created['id']}/result", {"status": "failed", "error": "CRM down"})
    assert r.json()["status"] == "failed"
    assert r.json()["error"] == "CRM down"
    assert not Effect.objects.exists()


def test_an_escalated_action_cannot_be_reported_as_run(api, policies):
    created = api.post("/actions", reply_body()).json()
    r = api.post(f"/actions/{created['id']}/result", {"status": "executed", "result": {}})
    assert r.status_code == 409
    assert Action.objects.get(pk=created["id"]).status == ActionStatus.ESCALATED


def test_another_agent_cannot_report_a_result(api, outsider_api, policies):
    created = api.post("/actions", action_body()).json()
    r = outsider_api.post(f"/actions/{created['id']}/result", {"status": "executed"})
    assert r.status_code == 404


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_submissions_make_exactly_one_action(agent, policies, agent_token):
    token = agent_token[0]
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def submit(key: str) -> None:
        try:
            barrier.wait()
            action, created = submit_action(
                token=token,
                action_type="send_reply",
                payload={"ticket_id": "T-1", "to": "a@example.com", "body": "Hi"},
                confidence=0.9,
                idempotency_key=key,
            )
            results.append((str(action.pk), created))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    for round_ in range(3):
        results.clear()
        barrier.reset()
        threads = [threading.Thread(target=submit, args=(f"k{round_}",)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len({pk for pk, _ in results}) == 1
        assert sum(created for _, created in results) == 1
    assert Action.objects.count() == 3
    assert Escalation.objects.count() == 3
