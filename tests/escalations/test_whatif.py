import pytest

from escalations.models import AutonomyPolicy
from escalations.policy import what_if
from workflows.models import Action, PolicyOutcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(agent, policies, propose):
    """20 CRM updates at confidences 0.50..0.97; the 'crm' policy lets >= 0.70 act alone."""
    actions = [
        propose(
            "update_crm",
            {"ticket_id": f"T-{i}", "note": "refund" if i % 5 == 0 else ""},
            0.5 + i * 0.025 + 0.0001,
        )
        for i in range(20)
    ]
    assert sum(a.outcome == PolicyOutcome.AUTO for a in actions) == 12
    return actions


def test_raising_a_bar_shows_how_many_move_from_alone_to_review(history, policies):
    draft = AutonomyPolicy.objects.get(pk=policies[0].pk)
    draft.min_confidence = 0.8
    report = what_if(draft, limit=100)
    assert report.total == 20
    # 0.70..0.775 (4 actions) no longer clear the bar.
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.REVIEW)] == 4
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.AUTO)] == 8
    assert report.counts[(PolicyOutcome.REVIEW, PolicyOutcome.REVIEW)] == 8
    assert report.moved == 4
    move = report.transitions[0]
    assert move["stricter"] and len(move["examples"]) == 4
    assert "confidence 0.70 < 0.80 required" in move["examples"][0].reasons_after[0]
    # Nothing was saved.
    assert AutonomyPolicy.objects.get(pk=policies[0].pk).min_confidence == 0.7


def test_a_new_blocking_draft_counts_moves_to_block(history):
    # Outcome 'act alone' with no bar: it only ever adds its block pattern.
    draft = AutonomyPolicy(
        name="no refunds talk", block_patterns="refund", outcome="auto", min_confidence=0.0
    )
    report = what_if(draft, limit=100)
    # i = 0, 5, 10, 15 mention refunds; of those 10 and 15 acted alone, 0 and 5 were reviewed.
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.BLOCK)] == 2
    assert report.counts[(PolicyOutcome.REVIEW, PolicyOutcome.BLOCK)] == 2
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.AUTO)] == 10
    assert report.counts[(PolicyOutcome.REVIEW, PolicyOutcome.REVIEW)] == 6
    assert report.moved == 4


def test_disabling_a_draft_shows_what_it_was_holding(history, policies):
    draft = AutonomyPolicy.objects.get(pk=policies[0].pk)
    draft.enabled = False
    report = what_if(draft, limit=100)
    # Without it nothing covers update_crm: everything goes to review by default.
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.REVIEW)] == 12


def test_only_the_last_n_actions_are_replayed(history, policies):
    draft = AutonomyPolicy.objects.get(pk=policies[0].pk)
    draft.min_confidence = 0.0
    report = what_if(draft, limit=5)
    assert report.total == 5
    assert report.moved == 0  # the 5 newest are the most confident: already alone


def test_rate_caps_are_replayed_from_the_history(history, policies):
    draft = AutonomyPolicy.objects.get(pk=policies[0].pk)
    draft.rate_limit_count = 10
    draft.rate_limit_window_minutes = 60
    report = what_if(draft, limit=100)
    assert report.counts[(PolicyOutcome.AUTO, PolicyOutcome.REVIEW)] == 2


def test_the_admin_previews_a_draft_without_saving_it(admin_client, history, policies):
    policy = policies[0]
    url = f"/admin/escalations/autonomypolicy/{policy.pk}/change/"
    form = {
        "name": policy.name,
        "enabled": "on",
        "priority": "100",
        "workflow": "",
        "agent": "",
        "action_type": "update_crm",
        "outcome": "auto",
        "min_confidence": "0.8",
        "irreversible_requires_review": "on",
        "approvals_required": "1",
        "whatif_limit": "100",
        "_whatif": "Preview impact (what-if)",
    }
    page = admin_client.post(url, form)
    assert page.status_code == 200
    body = page.content.decode()
    assert "What-if: this draft against the last 20 recorded actions (not saved)" in body
    assert "4 from Act alone to Needs review" in body
    policy.refresh_from_db()
    assert (policy.min_confidence, policy.version) == (0.7, 1)

    del form["_whatif"]
    form["_save"] = "Save"
    assert admin_client.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert (policy.min_confidence, policy.version) == (0.8, 2)
    assert Action.objects.filter(policy_version=1).count() == 20
