from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from escalations.actions import AlreadyDecided, decide_escalation
from escalations.models import Approval, Decision, EscalationStatus, Verdict, Via
from workflows.models import Action, ActionStatus

from .conftest import REFUND, escalation_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def quorum_escalation(refund_policy, propose):
    refund_policy(approvals_required=2)
    return escalation_of(propose("issue_refund", REFUND, 0.9))


def test_it_stays_open_until_two_distinct_reviewers_approve(
    quorum_escalation, alice, carol, django_capture_on_commit_callbacks
):
    esc = quorum_escalation
    assert esc.approvals_required == 2
    with django_capture_on_commit_callbacks() as callbacks:
        first = decide_escalation(
            escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
        )
    assert isinstance(first, Approval) and not first.is_final
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN
    assert not Decision.objects.exists()
    assert Action.objects.get(pk=esc.action_id).status == ActionStatus.ESCALATED
    # The queues hear about the progress; the run is not woken.
    assert len(callbacks) >= 1
    assert esc.approval_progress() == {"required": 2, "approved_by": ["alice"], "missing": 1}

    final = decide_escalation(
        escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.SLACK
    )
    assert isinstance(final, Decision) and final.is_final
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED
    assert Action.objects.get(pk=esc.action_id).status == ActionStatus.APPROVED


def test_the_same_reviewer_approving_twice_counts_once(quorum_escalation, alice):
    esc = quorum_escalation
    first = decide_escalation(
        escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    again = decide_escalation(
        escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.SLACK
    )
    assert again.pk == first.pk
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN
    assert esc.approvals.count() == 1


def test_one_rejection_ends_it(quorum_escalation, alice, carol):
    esc = quorum_escalation
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)
    decision = decide_escalation(
        escalation_id=esc.pk, user=carol, verdict=Verdict.REJECT, via=Via.WEB, reason="too much"
    )
    assert decision.verdict == Verdict.REJECT
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.REJECTED
    with pytest.raises(AlreadyDecided):
        decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB)


def test_a_quorum_approval_cannot_edit_what_the_others_approved(quorum_escalation, alice):
    with pytest.raises(ValidationError):
        decide_escalation(
            escalation_id=quorum_escalation.pk,
            user=alice,
            verdict=Verdict.APPROVE,
            via=Via.WEB,
            edited_payload={"ticket_id": "T-1", "amount": 1},
        )
    assert not Approval.objects.exists()


def test_quorum_can_apply_only_above_an_amount(refund_policy, propose):
    refund_policy(approvals_required=2, approvals_required_above=Decimal("100"))
    small = escalation_of(propose("issue_refund", {"ticket_id": "T-1", "amount": 80}, 0.9))
    large = escalation_of(propose("issue_refund", {"ticket_id": "T-2", "amount": 150}, 0.9))
    assert (small.approvals_required, large.approvals_required) == (1, 2)
