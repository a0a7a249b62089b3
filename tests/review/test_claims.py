"""Claiming, releasing and reassigning: one winner, clear refusals, queues told on commit."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404

from escalations.actions import (
    AlreadyClaimed,
    AlreadyDecided,
    claim_escalation,
    decide_escalation,
    reassign_escalation,
    release_escalation,
)
from escalations.models import EscalationStatus, Verdict, Via
from tests.review.factories import escalate
from workflows.models import TraceEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def esc(agent, policies):
    return escalate(agent, subject="Refund")


def test_claiming_marks_who_is_on_it_and_tells_the_queues_on_commit(
    esc, alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        claim_escalation(escalation_id=esc.pk, user=alice)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.CLAIMED and esc.claimed_by == alice
    assert esc.claimed_at is not None
    assert callbacks
    assert TraceEvent.objects.filter(kind="human", message="alice claimed send_reply").exists()


def test_claiming_twice_is_harmless_and_a_teammate_is_told_who_has_it(esc, alice, carol):
    claim_escalation(escalation_id=esc.pk, user=alice)
    claim_escalation(escalation_id=esc.pk, user=alice)
    with pytest.raises(AlreadyClaimed, match="already claimed by alice"):
        claim_escalation(escalation_id=esc.pk, user=carol)
    assert TraceEvent.objects.filter(message="alice claimed send_reply").count() == 1


def test_a_claim_never_stops_a_teammate_from_deciding(esc, alice, carol):
    claim_escalation(escalation_id=esc.pk, user=alice)
    decide_escalation(escalation_id=esc.pk, user=carol, verdict=Verdict.APPROVE, via=Via.WEB)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.APPROVED


def test_a_decided_escalation_cannot_be_claimed_released_or_moved(esc, alice, billing):
    decide_escalation(escalation_id=esc.pk, user=alice, verdict=Verdict.APPROVE, via=Via.API)
    with pytest.raises(AlreadyDecided, match="via api"):
        claim_escalation(escalation_id=esc.pk, user=alice)
    with pytest.raises(AlreadyDecided):
        reassign_escalation(escalation_id=esc.pk, user=alice, team_id=billing.pk)
    esc.refresh_from_db()
    assert esc.team.slug == "support" and esc.claimed_by is None


def test_only_the_claimant_or_an_admin_releases(esc, alice, carol, admin_user):
    claim_escalation(escalation_id=esc.pk, user=alice)
    with pytest.raises(AlreadyClaimed):
        release_escalation(escalation_id=esc.pk, user=carol)
    release_escalation(escalation_id=esc.pk, user=admin_user)
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN and esc.claimed_by is None


def test_outsiders_can_do_nothing_with_it(esc, bob, billing):
    for act in (claim_escalation, release_escalation):
        with pytest.raises(Http404):
            act(escalation_id=esc.pk, user=bob)
    with pytest.raises(Http404):
        reassign_escalation(escalation_id=esc.pk, user=bob, team_id=billing.pk)


def test_reassigning_drops_the_claim_keeps_the_sla_and_tells_both_teams(
    esc, alice, billing, django_capture_on_commit_callbacks, monkeypatch
):
    from review import live

    sent: list[dict] = []
    monkeypatch.setattr(live, "send_to_groups", lambda groups, message: sent.append(message))
    claim_escalation(escalation_id=esc.pk, user=alice)
    due = esc.sla_due_at
    with django_capture_on_commit_callbacks(execute=True):
        reassign_escalation(escalation_id=esc.pk, user=alice, team_id=billing.pk, note="$$")
    esc.refresh_from_db()
    assert esc.team == billing and esc.status == EscalationStatus.OPEN
    assert esc.claimed_by is None and esc.sla_due_at == due
    assert set(sent[-1]["teams"]) == {billing.pk, alice.teams.get().pk}
    assert TraceEvent.objects.filter(message__contains="from Support to Billing: $$").exists()


def test_reassigning_to_the_same_team_or_nowhere_is_refused(esc, alice, support):
    with pytest.raises(ValidationError, match="already with Support"):
        reassign_escalation(escalation_id=esc.pk, user=alice, team_id=support.pk)
    with pytest.raises(ValidationError, match="No such team"):
        reassign_escalation(escalation_id=esc.pk, user=alice, team_id=999_999)
