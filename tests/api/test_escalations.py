import uuid

import pytest

from escalations.actions import decide_escalation
from escalations.models import Decision, Escalation, EscalationStatus, Verdict, Via
from workflows.models import Action, ActionStatus

from .conftest import reply_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def escalated(api, policies):
    """An agent's reply, waiting for Support."""
    return api.post("/actions", reply_body()).json()


def test_a_reviewer_token_lists_open_escalations_of_its_users_teams(reviewer_api, escalated):
    r = reviewer_api.get("/escalations", status="open")
    assert r.status_code == 200
    page = r.json()
    assert page["count"] == 1
    item = page["items"][0]
    assert item["id"] == escalated["escalation_id"]
    assert item["team"] == "support"
    assert item["action"]["payload"]["to"] == "ada@example.com"
    assert item["decision"] is None
    assert reviewer_api.get("/escalations", status="approved").json()["count"] == 0


def test_an_unknown_status_is_422(reviewer_api, escalated):
    assert reviewer_api.get("/escalations", status="pending").status_code == 422
    assert reviewer_api.get("/escalations", limit=0).status_code == 422


def test_an_agent_token_without_reviewer_rights_is_403(api, escalated):
    assert api.get("/escalations").status_code == 403
    r = api.post(f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "approve"})
    assert r.status_code == 403
    assert Escalation.objects.get().status == EscalationStatus.OPEN


def test_a_reviewer_approves_with_an_edited_payload(reviewer_api, api, escalated, alice):
    edited = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Refund sent today."}
    r = reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision",
        {"verdict": "approve", "edited_payload": edited},
    )
    assert r.status_code == 201, r.content
    assert r.json()["status"] == "approved"
    assert r.json()["decision"]["via"] == "api"
    assert r.json()["decision"]["decided_by"] == "alice"
    seen = api.get(f"/actions/{escalated['id']}").json()
    assert seen["status"] == "approved"
    assert seen["decided"] is True
    assert seen["verdict"] == "approve"
    assert seen["payload_to_execute"] == edited
    assert seen["edited_payload"] == edited
    assert seen["decided_by"] == "alice"


def test_an_edited_payload_the_action_type_refuses_is_422(reviewer_api, escalated):
    r = reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision",
        {"verdict": "approve", "edited_payload": {"ticket_id": "T-1"}},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "edited_payload"]
    assert not Decision.objects.exists()


def test_rejecting_without_a_reason_is_422_and_decides_nothing(reviewer_api, escalated):
    r = reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "reject"}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "reason"]
    assert Escalation.objects.get().status == EscalationStatus.OPEN


def test_a_rejection_reaches_the_agent_with_its_reason(reviewer_api, api, escalated):
    reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision",
        {"verdict": "reject", "reason": "Wrong customer"},
    )
    seen = api.get(f"/actions/{escalated['id']}").json()
    assert seen["status"] == "rejected"
    assert seen["reason"] == "Wrong customer"
    assert Action.objects.get(pk=escalated["id"]).status == ActionStatus.REJECTED


def test_a_second_decision_gets_409_with_the_first(reviewer_api, escalated, carol):
    decide_escalation(
        escalation_id=escalated["escalation_id"],
        user=carol,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="Not now",
    )
    r = reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "approve"}
    )
    assert r.status_code == 409
    body = r.json()
    assert body["escalation_status"] == "rejected"
    assert body["decision"]["decided_by"] == "carol"
    assert body["decision"]["via"] == "web"
    assert body["decision"]["reason"] == "Not now"
    assert Decision.objects.count() == 1


def test_another_teams_escalation_is_404_to_a_reviewer(client, escalated, agent, bob):
    from api.actions import create_api_token

    from .conftest import Api

    _, raw = create_api_token(agent=agent, reviewer=True, user=bob)
    outsider = Api(client, raw)
    assert outsider.get("/escalations").json()["count"] == 0
    assert outsider.get(f"/escalations/{escalated['escalation_id']}").status_code == 404
    r = outsider.post(f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "approve"})
    assert r.status_code == 404
    assert not Decision.objects.exists()
    assert reviewer_unknown(outsider) == 404


def reviewer_unknown(api) -> int:
    return api.get(f"/escalations/{uuid.uuid4()}").status_code


def test_an_agents_own_token_never_decides_its_own_escalation(client, escalated, agent, alice):
    """The policy governs the agent: its token may carry reviewer rights as alice, but not
    over the agent's own actions."""
    from api.actions import create_api_token

    from .conftest import Api

    _, raw = create_api_token(agent=agent, reviewer=True, user=alice)
    r = Api(client, raw).post(
        f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "approve"}
    )
    assert r.status_code == 403, r.content
    assert "own" in r.json()["detail"]
    assert not Decision.objects.exists()
    assert Escalation.objects.get().status == EscalationStatus.OPEN
    assert Action.objects.get().status == ActionStatus.ESCALATED


def test_a_reviewer_token_must_name_a_person(agent):
    from api.actions import NotAReviewer, create_api_token
    from escalations.actions import system_user

    with pytest.raises(NotAReviewer):
        create_api_token(agent=agent, reviewer=True)
    with pytest.raises(NotAReviewer):
        create_api_token(agent=agent, reviewer=True, user=system_user())


def test_the_database_refuses_a_decision_by_a_service_account(escalated, alice):
    from django.contrib.auth.models import User
    from django.db import IntegrityError, transaction

    from escalations.actions import system_user
    from escalations.models import ServiceAccount

    robot = User.objects.create(username="api-triage-agent")
    ServiceAccount.objects.create(user=robot, kind="agent")
    escalation = Escalation.objects.get()
    for user, via in ((robot, Via.API), (robot, Via.SYSTEM), (system_user(), Via.WEB)):
        with pytest.raises(IntegrityError), transaction.atomic():
            Decision.objects.create(
                escalation=escalation, verdict=Verdict.APPROVE, decided_by=user, via=via
            )
    assert not Decision.objects.exists()
    # The SLA's system user, via "system", and any person are let through.
    with transaction.atomic():
        Decision.objects.create(
            escalation=escalation, verdict=Verdict.REJECT, decided_by=system_user(), via="system"
        )
        transaction.set_rollback(True)
    Decision.objects.create(
        escalation=escalation, verdict=Verdict.APPROVE, decided_by=alice, via=Via.API
    )


def test_a_service_account_is_refused_with_a_clear_error_and_nothing_written(escalated):
    from django.contrib.auth.models import User

    from escalations.actions.decisions import NotAPerson
    from escalations.models import ServiceAccount

    robot = User.objects.create(username="api-triage-agent")
    ServiceAccount.objects.create(user=robot, kind="agent")
    # As earlier versions made it: a member of the agent's team, so it sees the escalation.
    Escalation.objects.get().team.members.add(robot)
    with pytest.raises(NotAPerson):
        decide_escalation(
            escalation_id=escalated["escalation_id"],
            user=robot,
            verdict=Verdict.APPROVE,
            via=Via.API,
        )
    assert Escalation.objects.get().status == EscalationStatus.OPEN


def test_an_approval_after_the_sla_ran_out_is_409_and_writes_nothing(reviewer_api, escalated):
    from datetime import timedelta

    from django.utils import timezone

    Escalation.objects.filter(pk=escalated["escalation_id"]).update(
        sla_due_at=timezone.now() - timedelta(seconds=1)
    )
    r = reviewer_api.post(
        f"/escalations/{escalated['escalation_id']}/decision", {"verdict": "approve"}
    )
    assert r.status_code == 409, r.content
    assert "SLA ran out" in r.json()["detail"]
    assert not Decision.objects.exists()
    assert Escalation.objects.get().status == EscalationStatus.OPEN
