import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escalations.actions import set_autonomy_paused
from escalations.models import AgentProfile, Escalation
from tests.support.queries import statements
from workflows.actions import create_action
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


@pytest.mark.parametrize("or_existing", [True, False], ids=["engine", "api"])
def test_a_proposal_checks_the_cached_policies_where_it_writes_and_asks_again_if_stale(
    admin_user, agent, policies, or_existing, django_capture_on_commit_callbacks
):
    """No statement of its own for the policies' freshness: the action's INSERT checks the
    stamp, and a change since the cache was compiled sends the proposal back to the gate."""
    if connection.vendor != "postgresql":
        pytest.skip("the guarded INSERT is PostgreSQL's; SQLite reads the stamp first")

    def create(key: str) -> tuple[Action, list[str]]:
        with (
            django_capture_on_commit_callbacks(execute=False),
            CaptureQueriesContext(connection) as ctx,
        ):
            action = create_action(
                agent=agent,
                action_type="update_crm",
                payload={"ticket_id": key},
                confidence=0.99,
                rationale="test",
                idempotency_key=key,
                workflow="support_triage",
                or_existing=or_existing,
            )
        return action, statements(ctx)

    assert create("warm")[0].status == ActionStatus.AUTO_APPROVED  # compiles, caches
    action, sql = create("cached")
    assert action.status == ActionStatus.AUTO_APPROVED
    assert "SELECT escalations_policycachestamp" not in sql, sql
    set_autonomy_paused(agent_id=agent.pk, paused=True, by=admin_user, reason="incident")
    action, sql = create("stale")
    assert action.status == ActionStatus.ESCALATED
    assert action.reasons == ["autonomy is paused for agent 'triage-agent' (kill switch)"]
    # The stale guard wrote nothing; the stamp read afresh, the policies recompiled.
    assert Action.objects.filter(idempotency_key="stale").count() == 1
    assert "SELECT escalations_policycachestamp" in sql, sql
    # A key taken already is still told apart from a stale cache.
    if or_existing:
        again, _ = create("stale")
        assert again.pk == action.pk
