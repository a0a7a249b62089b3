import pytest
from django.core.exceptions import ValidationError

from escalations.actions import decide_escalation, restore_policy_version, save_policy
from escalations.models import AutonomyPolicy, EscalationStatus, Verdict, Via
from escalations.policy import policy_as_evaluated
from workflows.models import Action, ActionStatus, PolicyOutcome

from .conftest import REFUND, escalation_of

pytestmark = pytest.mark.django_db


def test_every_change_is_a_new_version_with_who_and_what(admin_user, policies):
    policy = policies[0]
    policy.min_confidence = 0.9
    save_policy(policy=policy, user=admin_user)
    assert policy.version == 2
    latest, first = policy.history.order_by("-history_id")[:2]
    assert (latest.version, latest.history_user) == (2, admin_user)
    delta = latest.diff_against(first, excluded_fields=["updated_at", "version"])
    assert [(c.field, c.old, c.new) for c in delta.changes] == [("min_confidence", 0.7, 0.9)]


def test_saving_without_a_change_makes_no_version(admin_user, policies):
    save_policy(policy=policies[0], user=admin_user)
    assert AutonomyPolicy.objects.get(pk=policies[0].pk).version == 1
    assert policies[0].history.count() == 1


def test_restoring_an_earlier_version_is_a_new_version(admin_user, policies):
    policy = policies[0]
    policy.min_confidence = 0.9
    save_policy(policy=policy, user=admin_user)
    restored = restore_policy_version(policy_id=policy.pk, version=1, user=admin_user)
    assert (restored.version, restored.min_confidence) == (3, 0.7)
    record = restored.history.order_by("-history_id").first()
    assert record.history_change_reason == "restored from v1"
    with pytest.raises(ValidationError):
        restore_policy_version(policy_id=policy.pk, version=42, user=admin_user)


def test_a_policy_edited_between_escalation_and_decision_changes_nothing_recorded(
    admin_user, alice, support, billing, refund_policy, propose
):
    policy = refund_policy(sla_minutes=30, expiry_behaviour="reject", approvals_required=1)
    action = propose("issue_refund", REFUND, 0.9)
    esc = escalation_of(action)
    reasons = list(action.reasons)
    # The admin tightens everything after the fact.
    policy.outcome = PolicyOutcome.BLOCK
    policy.team = billing
    policy.sla_minutes = 5
    policy.approvals_required = 3
    save_policy(policy=policy, user=admin_user)
    assert policy.version == 2

    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    action = Action.objects.get(pk=action.pk)
    esc.refresh_from_db()
    assert action.policy_version == 1
    assert action.reasons == reasons
    assert action.status == ActionStatus.APPROVED
    assert (esc.team_id, esc.sla_minutes, esc.approvals_required) == (support.pk, 30, 1)
    assert esc.status == EscalationStatus.APPROVED
    # What it was held to is still readable.
    then = policy_as_evaluated(policy.pk, 1)
    assert (then.outcome, then.team_id, then.sla_minutes) == ("review", support.pk, 30)


def test_an_escalation_is_routed_by_the_version_it_was_evaluated_under(
    admin_user, support, billing, refund_policy, propose
):
    policy = refund_policy(team=billing)
    policy.team = support
    save_policy(policy=policy, user=admin_user)
    action = propose("issue_refund", REFUND, 0.9)
    assert action.policy_version == 2
    assert escalation_of(action).team_id == support.pk
