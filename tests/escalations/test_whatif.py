import pytest

from escalations.actions import decide_escalation
from escalations.models import AutonomyPolicy, Escalation, Verdict, Via
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
    # Newest first: the last one replayed is the most confident of the four.
    assert "confidence 0.78 < 0.80 required" in move["examples"][0].reasons_after[0]
    assert "confidence 0.70 < 0.80 required" in move["examples"][-1].reasons_after[0]
    assert {ex.verdict for ex in move["examples"]} == {"none needed: acted alone"}
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
    form["change_reason"] = "replay says four fewer act alone: fine"
    assert admin_client.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert (policy.min_confidence, policy.version) == (0.8, 2)
    assert Action.objects.filter(policy_version=1).count() == 20


def test_each_example_names_its_ticket_links_it_and_says_what_a_person_decided(
    history, policies, alice
):
    reviewed = [a for a in history if a.outcome == PolicyOutcome.REVIEW]
    verdicts = [Verdict.APPROVE, Verdict.REJECT, Verdict.APPROVE, Verdict.RESPOND]
    for action, verdict in zip(reviewed, verdicts, strict=False):
        edited = {**action.payload, "note": "fixed"} if action is reviewed[2] else None
        decide_escalation(
            escalation_id=Escalation.objects.get(action=action).pk,
            user=alice,
            verdict=verdict,
            via=Via.WEB,
            reason="" if verdict == Verdict.APPROVE else "not like this",
            edited_payload=edited,
        )
    draft = AutonomyPolicy.objects.get(pk=policies[0].pk)
    draft.min_confidence = 0.5
    report = what_if(draft, limit=100)
    move = report.transitions[0]
    assert (move["before"], move["after"], move["count"]) == (
        PolicyOutcome.REVIEW,
        PolicyOutcome.AUTO,
        8,
    )
    examples = move["examples"]
    assert len(examples) == 8
    # Newest first, each its own line: confidence, ticket, link and verdict.
    assert [ex.confidence for ex in examples] == sorted(
        (ex.confidence for ex in examples), reverse=True
    )
    assert len({(ex.action_id, ex.url) for ex in examples}) == 8
    by_action = {ex.action_id: ex for ex in examples}
    oldest = [by_action[str(a.pk)] for a in reviewed[:4]]
    assert [ex.verdict for ex in oldest] == [
        "Approve by alice",
        "Reject by alice",
        "Approve by alice (edited)",
        "Respond by alice",
    ]
    assert by_action[str(reviewed[5].pk)].verdict == "waiting for a person"
    for ex in examples:
        esc = Escalation.objects.get(action_id=ex.action_id)
        assert ex.url == f"/review/{esc.pk}/"
        assert ex.title == "Charged twice for my subscription"
        assert (
            ex.ticket == Escalation.objects.get(action_id=ex.action_id).action.payload["ticket_id"]
        )


def test_the_admin_lists_the_examples_with_links_and_verdicts(admin_client, history, policies):
    policy = policies[0]
    page = admin_client.post(
        f"/admin/escalations/autonomypolicy/{policy.pk}/change/",
        {
            "name": policy.name,
            "enabled": "on",
            "priority": "100",
            "action_type": "update_crm",
            "outcome": "auto",
            "min_confidence": "0.5",
            "irreversible_requires_review": "on",
            "approvals_required": "1",
            "whatif_limit": "100",
            "_whatif": "Preview impact (what-if)",
        },
    )
    body = page.content.decode()
    assert "8 from Needs review to Act alone" in body
    assert body.count('href="/review/') >= 8
    assert "waiting for a person" in body
    assert "What a person decided" in body


def _policy_form(policy, **changes):
    form = {
        "name": policy.name,
        "enabled": "on",
        "priority": "100",
        "action_type": policy.action_type,
        "outcome": "auto",
        "min_confidence": str(policy.min_confidence),
        "irreversible_requires_review": "on",
        "approvals_required": "1",
        "whatif_limit": "100",
        "_save": "Save",
    }
    form.update(changes)
    return form


def test_saving_a_change_asks_why_and_keeps_the_reason_in_the_history(admin_client, policies):
    policy = policies[0]
    url = f"/admin/escalations/autonomypolicy/{policy.pk}/change/"
    page = admin_client.post(url, _policy_form(policy, min_confidence="0.9"))
    assert page.status_code == 200
    assert "Say why you are changing this policy." in page.content.decode()
    policy.refresh_from_db()
    assert (policy.min_confidence, policy.version) == (0.7, 1)

    reason = "Three wrong CRM updates at 0.75 last week"
    page = admin_client.post(url, _policy_form(policy, min_confidence="0.9", change_reason=reason))
    assert page.status_code == 302
    policy.refresh_from_db()
    assert (policy.min_confidence, policy.version) == (0.9, 2)
    latest = policy.history.order_by("-history_id").first()
    assert latest.history_change_reason == reason and latest.history_user.username == "root"
    assert reason in admin_client.get(url).content.decode()  # in the versions table


def test_a_preview_needs_no_reason(admin_client, history, policies):
    policy = policies[0]
    form = _policy_form(policy, min_confidence="0.8", _whatif="Preview impact (what-if)")
    del form["_save"]
    page = admin_client.post(f"/admin/escalations/autonomypolicy/{policy.pk}/change/", form)
    assert "Say why you are changing this policy." not in page.content.decode()
    assert "What-if: this draft" in page.content.decode()
