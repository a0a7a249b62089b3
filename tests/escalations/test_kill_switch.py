import pytest

from escalations.actions import set_autonomy_paused
from escalations.models import AgentProfile, Escalation
from workflows.models import Action, ActionStatus, PolicyOutcome

pytestmark = pytest.mark.django_db


def test_pausing_is_immediate_and_on_the_record(admin_user, agent, policies, propose):
    assert propose("update_crm", {"ticket_id": "T-1"}, 0.99).outcome == PolicyOutcome.AUTO
    set_autonomy_paused(agent_id=agent.pk, paused=True, by=admin_user, reason="bad replies")
    action = propose("update_crm", {"ticket_id": "T-2"}, 0.99)
    assert action.status == ActionStatus.ESCALATED
    assert action.reasons == ["autonomy is paused for agent 'triage-agent' (kill switch)"]

    agent.refresh_from_db()
    assert (agent.autonomy_paused_by, agent.autonomy_pause_reason) == (admin_user, "bad replies")
    record = agent.history.order_by("-history_id").first()
    assert record.history_user == admin_user
    assert record.history_change_reason == "kill switch ON: bad replies"


def test_pausing_holds_back_what_was_approved_alone_but_has_not_run(
    admin_user, agent, policies, propose
):
    pending = propose("update_crm", {"ticket_id": "T-1"}, 0.99)
    assert pending.status == ActionStatus.AUTO_APPROVED
    set_autonomy_paused(agent_id=agent.pk, paused=True, by=admin_user, reason="incident")
    pending.refresh_from_db()
    assert pending.status == ActionStatus.ESCALATED
    assert pending.reasons[0].startswith("autonomy was paused for agent 'triage-agent' by root")
    assert Escalation.objects.filter(action=pending).exists()


def test_resuming_restores_autonomy_and_pausing_twice_changes_nothing(
    admin_user, agent, policies, propose
):
    set_autonomy_paused(agent_id=agent.pk, paused=True, by=admin_user)
    set_autonomy_paused(agent_id=agent.pk, paused=True, by=admin_user)
    assert agent.history.count() == 2  # created, paused once
    set_autonomy_paused(agent_id=agent.pk, paused=False, by=admin_user, reason="fixed")
    assert AgentProfile.objects.get(pk=agent.pk).autonomy_paused_by is None
    assert propose("update_crm", {"ticket_id": "T-3"}, 0.99).outcome == PolicyOutcome.AUTO
    assert Action.objects.filter(status=ActionStatus.ESCALATED).count() == 0
