"""Prompt versions: only tested versions go live; activation and rollback are audited."""

import pytest

from tests.fakes.openai_server import CANNED, schema_name
from workflows.prompts.actions import (
    PromptError,
    activate_prompt_version,
    evaluate_prompt_version,
    install_default_prompts,
    rollback_prompt,
    version_for_run,
)
from workflows.prompts.models import PromptAudit, PromptStatus, PromptVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft(admin_user):
    install_default_prompts()
    v1 = PromptVersion.objects.get(name="triage.classify", version=1)
    return PromptVersion.objects.create(
        name="triage.classify",
        version=2,
        system=v1.system,
        template=v1.template + "\nBe terse.",
        parameters=v1.parameters,
    )


def test_shipped_prompts_are_installed_active_with_eval_cases():
    install_default_prompts()
    active = set(
        PromptVersion.objects.filter(status=PromptStatus.ACTIVE).values_list("name", flat=True)
    )
    assert {
        "triage.classify",
        "triage.draft_reply",
        "triage.propose",
        "triage.judge_reply",
        "escalation.summary",
    } <= active


def test_a_draft_cannot_be_activated_before_its_cases_pass(draft, admin_user):
    with pytest.raises(PromptError, match="only a version whose evaluation cases passed"):
        activate_prompt_version(version=draft, by=admin_user)
    assert PromptVersion.objects.get(name="triage.classify", status="active").version == 1


def test_activation_is_refused_when_an_eval_case_fails(fake_openai, draft, admin_user):
    # The candidate calls an outage "low" urgency: the "outage is urgent" case fails.
    fake_openai.responder = lambda req: {**CANNED[schema_name(req)], "urgency": "low"}
    report = evaluate_prompt_version(version=draft, by=admin_user)
    assert report["passed"] is False
    failed = [c for c in report["cases"] if not c["passed"]]
    assert [c["case"] for c in failed] == ["outage is urgent"]
    draft.refresh_from_db()
    assert draft.status == PromptStatus.DRAFT
    with pytest.raises(PromptError):
        activate_prompt_version(version=draft, by=admin_user)
    assert PromptAudit.objects.filter(event="test_failed", version=2).exists()


def test_a_passing_version_activates_and_rolls_back_in_one_step(fake_openai, draft, admin_user):
    def good(req):
        text = req["messages"][1]["content"]
        return {**CANNED[schema_name(req)], "urgency": "high" if "outage" in text else "normal"}

    fake_openai.responder = good
    assert evaluate_prompt_version(version=draft, by=admin_user)["passed"] is True
    activate_prompt_version(version=draft, by=admin_user)
    assert PromptVersion.objects.get(name="triage.classify", status="active").version == 2
    assert PromptVersion.objects.get(name="triage.classify", version=1).status == "retired"

    back = rollback_prompt(name="triage.classify", by=admin_user)
    assert back.version == 1
    assert PromptVersion.objects.get(name="triage.classify", version=2).status == "retired"
    events = list(PromptAudit.objects.order_by("at").values_list("event", "version"))
    assert events[-3:] == [("tested", 2), ("activated", 2), ("rolled_back_to", 1)]


def test_rollback_with_nothing_earlier_is_refused(admin_user):
    install_default_prompts()
    with pytest.raises(PromptError, match="no earlier active version"):
        rollback_prompt(name="triage.classify", by=admin_user)


def test_a_run_keeps_the_versions_it_started_with(
    fake_openai, draft, admin_user, policies, ticket, django_capture_on_commit_callbacks
):
    from workflows.actions import start_run

    with django_capture_on_commit_callbacks(execute=False):
        run = start_run(workflow="support_triage", input=ticket)
    fake_openai.responder = lambda req: {
        **CANNED[schema_name(req)],
        "urgency": "high" if "outage" in req["messages"][1]["content"] else "normal",
    }
    evaluate_prompt_version(version=draft, by=admin_user)
    activate_prompt_version(version=draft, by=admin_user)
    assert version_for_run(run, "triage.classify").version == 1
    assert version_for_run(None, "triage.classify").version == 2


def test_an_unknown_eval_rule_fails_the_case_instead_of_passing(fake_openai, draft, admin_user):
    from workflows.prompts.models import PromptEvalCase

    PromptEvalCase.objects.create(
        prompt_name="triage.classify",
        name="typo",
        variables={"subject": "x", "body": "y"},
        expected={"category": {"equalz": "billing"}},
    )
    report = evaluate_prompt_version(version=draft, by=admin_user)
    assert report["passed"] is False
    assert any("unknown rule" in f for c in report["cases"] for f in c["failures"])
