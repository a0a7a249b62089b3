import pytest

from escalations.models import AgentProfile, AutonomyPolicy
from workflows.models import PolicyOutcome

pytestmark = pytest.mark.django_db


def test_the_policy_list_documents_precedence_and_recommends(admin_client, policies):
    page = admin_client.get("/admin/escalations/autonomypolicy/")
    body = page.content.decode()
    assert page.status_code == 200
    assert "How policies combine" in body
    assert "BLOCK over REVIEW over" in body
    assert "Threshold recommender" in body
    assert "not enough evidence: 0 decided issue_refund actions, at least 30 needed" in body


def test_an_admin_restores_an_earlier_version_as_a_new_one(admin_client, admin_user, policies):
    from escalations.actions import save_policy

    policy = policies[0]
    policy.min_confidence = 0.95
    save_policy(policy=policy, user=admin_user)
    page = admin_client.get(f"/admin/escalations/autonomypolicy/{policy.pk}/change/")
    assert "Restore v1" in page.content.decode()
    response = admin_client.post(f"/admin/escalations/autonomypolicy/{policy.pk}/restore/1/")
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.version, policy.min_confidence) == (3, 0.7)
    history = admin_client.get(f"/admin/escalations/autonomypolicy/{policy.pk}/change/")
    assert "restored from v1" in history.content.decode()


def test_restoring_needs_a_post(admin_client, policies):
    response = admin_client.get(f"/admin/escalations/autonomypolicy/{policies[0].pk}/restore/1/")
    assert response.status_code == 405


def test_the_admin_refuses_a_policy_that_leaves_expiry_implicit(admin_client, support):
    response = admin_client.post(
        "/admin/escalations/autonomypolicy/add/",
        {
            "name": "slow",
            "enabled": "on",
            "priority": "100",
            "outcome": "review",
            "min_confidence": "0.8",
            "approvals_required": "1",
            "sla_minutes": "30",
            "escalation_chain": "nope",
        },
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "Say what happens when the SLA passes" in body
    assert "No team with slug: nope" in body
    assert not AutonomyPolicy.objects.exists()


def test_the_kill_switch_from_the_agent_list_is_audited(admin_client, admin_user, agent, policies):
    response = admin_client.post(
        "/admin/escalations/agentprofile/",
        {"action": "pause_autonomy", "_selected_action": [agent.pk]},
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.autonomy_paused and agent.autonomy_paused_by == admin_user
    assert agent.history.order_by("-history_id").first().history_user == admin_user


def test_the_kill_switch_on_the_agent_form_keeps_the_reason(admin_client, admin_user, agent):
    response = admin_client.post(
        f"/admin/escalations/agentprofile/{agent.pk}/change/",
        {
            "name": agent.name,
            "agent_type": "triage",
            "description": "",
            "team": agent.team_id,
            "trust_level": "standard",
            "customer_facing": "on",
            "autonomy_paused": "on",
            "kill_switch_reason": "replies went out wrong",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    agent = AgentProfile.objects.get(pk=agent.pk)
    assert agent.autonomy_paused
    assert agent.agent_type == "triage"
    assert agent.autonomy_pause_reason == "replies went out wrong"
    assert agent.history.order_by("-history_id").first().history_change_reason == (
        "kill switch ON: replies went out wrong"
    )


def test_an_outcome_block_policy_can_be_added_in_the_admin(admin_client):
    response = admin_client.post(
        "/admin/escalations/autonomypolicy/add/",
        {
            "name": "no refunds",
            "enabled": "on",
            "priority": "100",
            "action_type": "issue_refund",
            "outcome": "block",
            "min_confidence": "0.8",
            "approvals_required": "1",
        },
    )
    assert response.status_code == 302
    policy = AutonomyPolicy.objects.get()
    assert (policy.outcome, policy.version) == (PolicyOutcome.BLOCK, 1)
    assert policy.history.get().history_user.username == "root"
