"""Audit sampling: a random, reproducible share of what runs alone is judged by a person."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from escalations import audit
from escalations.actions import decide_escalation
from escalations.models import Escalation, EscalationKind, Verdict, Via
from escalations.policy import CompiledPolicy, effective_audit_rate
from workflows.actions import execute_action
from workflows.models import ActionStatus, PolicyOutcome

from .conftest import REPLY, escalation_of

pytestmark = pytest.mark.django_db

CRM = {"ticket_id": "T-1", "priority": "low"}


class Always(random.Random):
    """An RNG whose every draw wins the sample."""

    def random(self) -> float:
        return 0.0


class Never(random.Random):
    def random(self) -> float:
        return 0.999999


def test_every_action_allowed_alone_stores_its_sampling_probability(act_alone, propose):
    act_alone("update_crm", audit_rate=0.05)
    with audit.use_rng(Never()):
        action = propose("update_crm", CRM, 0.9)
    assert action.outcome == PolicyOutcome.AUTO
    assert action.audit_probability == 0.05
    assert action.audit_sampled is False
    assert not Escalation.objects.filter(action=action).exists()


def test_an_escalated_action_has_no_sampling_probability(act_alone, propose):
    act_alone("update_crm", audit_rate=0.05)
    action = propose("update_crm", CRM, 0.2)
    assert action.outcome == PolicyOutcome.REVIEW
    assert action.audit_probability is None and action.audit_sampled is False


def test_the_same_seed_samples_the_same_actions(act_alone, propose):
    act_alone("update_crm", audit_rate=0.3)

    def draws(seed: int) -> list[bool]:
        with audit.use_rng(random.Random(seed)):
            return [propose("update_crm", CRM, 0.9).audit_sampled for _ in range(20)]

    first = draws(11)
    assert 0 < sum(first) < 20
    assert draws(11) == first
    expected = random.Random(11)
    assert first == [expected.random() < 0.3 for _ in range(20)]


def test_a_reversible_action_is_audited_after_it_ran_and_the_verdict_changes_nothing(
    act_alone, propose, alice
):
    act_alone("update_crm", audit_rate=0.02)
    with audit.use_rng(Always()):
        action = propose("update_crm", CRM, 0.9)
    assert action.status == ActionStatus.AUTO_APPROVED and action.audit_sampled
    assert not Escalation.objects.filter(action=action).exists()
    execute_action(action=action)
    esc = escalation_of(action)
    assert esc.kind == EscalationKind.AUDIT and esc.sla_due_at is None
    assert "audit sample (2.0% of update_crm" in esc.reasons[0]
    decide_escalation(
        escalation_id=esc.pk, user=alice, verdict=Verdict.REJECT, via=Via.WEB, reason="wrong field"
    )
    action.refresh_from_db()
    assert action.status == ActionStatus.EXECUTED  # it ran; the verdict is evidence


def test_an_irreversible_action_is_held_for_its_audit_before_it_runs(act_alone, propose, alice):
    act_alone("send_reply", audit_rate=0.02)
    with audit.use_rng(Always()):
        action = propose("send_reply", REPLY, 0.95)
    assert action.outcome == PolicyOutcome.AUTO  # policy let it act alone...
    assert action.status == ActionStatus.ESCALATED  # ...the audit holds it
    esc = escalation_of(action)
    assert esc.kind == EscalationKind.AUDIT
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED


def test_the_default_rate_is_higher_while_a_policy_is_new(act_alone, settings):
    settings.AUDIT_RATE, settings.AUDIT_RATE_NEW = 0.02, 0.10
    policy = act_alone("update_crm")
    compiled = CompiledPolicy.of(policy)
    now = timezone.now()
    assert effective_audit_rate(compiled, now) == 0.10
    assert effective_audit_rate(compiled, now + timedelta(days=15)) == 0.02
    policy.audit_rate = 0.07
    assert effective_audit_rate(CompiledPolicy.of(policy), now) == 0.07


def test_reconciliation_waits_on_an_audit_holding_an_action_never_on_one_of_what_ran(
    act_alone, propose
):
    from workflows.gate import gate
    from workflows.models import WorkflowRun

    act_alone("update_crm", audit_rate=0.5)
    act_alone("send_reply", audit_rate=0.5)
    with audit.use_rng(Always()):
        ran = propose("update_crm", CRM, 0.9)
        held = propose("send_reply", REPLY, 0.95)
    execute_action(action=ran)
    assert escalation_of(ran).is_undecided and escalation_of(held).is_undecided
    waiting = set(WorkflowRun.objects.filter(gate().awaiting_people()).values_list("pk", flat=True))
    assert waiting == {held.run_id}
    not_waiting = WorkflowRun.objects.exclude(gate().awaiting_people())
    assert ran.run_id in set(not_waiting.values_list("pk", flat=True))
