"""The mention-research workflow and the triage follow-up (a wake-up)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from escalations.actions import decide_escalation
from escalations.models import Verdict, Via
from tests.conftest import wait_for_run
from workflows import engine
from workflows.actions import record_message, start_run
from workflows.mentions import corpus, sentiment
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    Outcome,
    RunStatus,
    StepRun,
    StepStatus,
    TraceKind,
    WorkflowRun,
)
from workflows.specs import InvalidInput

pytestmark = pytest.mark.django_db(transaction=True)

ACME = {"company": "Acme Robotics"}


def test_the_plan_has_one_parallel_scan_per_publication(research_agent, inline_tasks):
    run = start_run(workflow="mention_research", input=ACME)
    scans = [p for p in run.plan if p["template"] == "scan"]
    assert len(scans) == len(corpus()) == 5
    assert {p["mode"] for p in scans} == {"async"}
    judge = next(p for p in run.plan if p["name"] == "judge_sentiment")
    assert judge["depends_on"] == [p["name"] for p in scans]
    narrow = start_run(
        workflow="mention_research", input={**ACME, "publications": ["techwire", "daily-ledger"]}
    )
    assert len([p for p in narrow.plan if p["template"] == "scan"]) == 2


def test_bad_input_is_refused_before_a_run_exists(research_agent):
    for bad in ({}, {"company": " "}, {**ACME, "publications": ["nope"]}, {**ACME, "as_of": "x"}):
        with pytest.raises(InvalidInput):
            start_run(workflow="mention_research", input=bad)
    assert not WorkflowRun.objects.exists()


def test_negative_coverage_ends_in_a_verified_response_a_person_approves(
    research_agent, alice, inline_tasks
):
    run = start_run(workflow="mention_research", input=ACME)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING, run.error
    scans = [t for t, _ in inline_tasks.delivered if t == "workflows.tasks.run_step"]
    assert len(scans) == 6  # five publications and the verification
    judged = run.state["workspace"]["outputs"]["judge_sentiment"]
    assert judged["label"] == "negative"
    assert judged["mentions"] == 9
    weighing = run.trace.get(step_name="judge_sentiment", kind=TraceKind.DECIDED)
    assert "weighed by recency" in weighing.message
    weights = weighing.data["weights"]
    assert len(weights) == 9
    newest = max(weights, key=lambda w: -w["age_days"])
    oldest = max(weights, key=lambda w: w["age_days"])
    assert newest["recency_weight"] > oldest["recency_weight"]
    assert {w["volume_weight"] for w in weights} > {1.0}  # more coverage, less per mention
    drafts = run.state["workspace"]["outputs"]["draft_strategies"]["strategies"]
    assert len(drafts) == 3
    verified = run.state["workspace"]["outputs"]["verify_draft"]
    assert len(verified["verified"]) == 3 and verified["rejected"] == []
    action = Action.objects.get(run=run, action_type="publish_response")
    assert action.status == ActionStatus.ESCALATED
    assert "irreversible" in " ".join(action.reasons) or "no autonomy policy" in " ".join(
        action.reasons
    )
    assert set(action.payload["sources"]) <= {m for m in judged["negative"]}

    decide_escalation(
        escalation_id=action.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.state["workspace"]["outputs"]["publish"]["published"] is True
    assert Effect.objects.filter(action=action).count() == 1


def test_positive_coverage_needs_no_response(research_agent, inline_tasks):
    run = start_run(workflow="mention_research", input={"company": "Globex"})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.state["workspace"]["outputs"]["judge_sentiment"]["label"] == "positive"
    assert not Action.objects.filter(run=run).exists()


def test_the_sentiment_lexicon_reads_plain_sentences():
    assert sentiment("an excellent, award winning design") > 0
    assert sentiment("a recall after injuries; customers frustrating") < 0
    assert sentiment("the company exists") == 0


def test_mention_research_runs_end_to_end_through_a_real_worker(
    celery_worker, research_agent, alice
):
    for force_sync in (False, True):
        run = start_run(workflow="mention_research", input=ACME, force_sync=force_sync)
        wait_for_run(run, RunStatus.WAITING, timeout=40)
        action = Action.objects.get(run=run, action_type="publish_response")
        decide_escalation(
            escalation_id=action.escalation.pk,
            user=alice,
            verdict=Verdict.REJECT,
            via=Via.WEB,
            reason="legal wants to review first",
        )
        wait_for_run(run, RunStatus.SUCCEEDED, timeout=30)
        assert run.state["workspace"]["outputs"]["publish"] == {
            "published": False,
            "why": "legal wants to review first",
        }
        assert StepRun.objects.filter(run=run, attempts=1).count() == len(run.plan)


def _auto(policies):
    policies[1].irreversible_requires_review = False
    policies[1].min_confidence = 0.1
    policies[1].save()


def test_triage_schedules_a_follow_up_that_sleeps_six_hours(policies, ticket, inline_tasks):
    _auto(policies)
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    follow_up = WorkflowRun.objects.get(parent=run)
    assert follow_up.workflow == "support_follow_up"
    assert follow_up.status == RunStatus.WAITING
    assert follow_up.wake_at > timezone.now() + timedelta(hours=5, minutes=59)
    assert follow_up.wake_at < timezone.now() + timedelta(hours=6, minutes=1)
    # Scheduling again (a redelivered step) finds the same follow-up.
    assert (
        start_run(workflow="support_follow_up", input={}, idempotency_key=f"follow-up:{run.pk}")
        == follow_up
    )


@pytest.mark.parametrize(("customer_wrote", "quality"), [(False, "good"), (True, "bad")])
def test_the_follow_up_wakes_and_records_whether_the_customer_replied(
    policies, ticket, inline_tasks, customer_wrote, quality
):
    _auto(policies)
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    follow_up = WorkflowRun.objects.get(parent=run)
    if customer_wrote:
        record_message(run=run, role="customer", content="Still broken, please call me")
    # Six hours later, as far as the database timer is concerned.
    now = timezone.now()
    sleeping = StepRun.objects.get(run=follow_up, status=StepStatus.WAITING)
    sleeping.waiting_for = {**sleeping.waiting_for, "until": now.isoformat()}
    sleeping.save(update_fields=["waiting_for"])
    WorkflowRun.objects.filter(pk=follow_up.pk).update(wake_at=now)
    assert engine.wake_runs() == 1
    inline_tasks.drain()
    follow_up.refresh_from_db()
    assert follow_up.status == RunStatus.SUCCEEDED
    reply = Action.objects.get(run=run, action_type="send_reply")
    outcome = Outcome.objects.get(action=reply)
    assert (outcome.metric, outcome.quality, outcome.source) == (
        "customer_replied_within_6h",
        quality,
        "follow_up",
    )
    assert outcome.run == run
    assert follow_up.trace.filter(kind=TraceKind.RECOVERY, message__contains="wake-up").exists()


def test_no_follow_up_when_no_reply_was_sent(policies, ticket, alice, inline_tasks):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    reply = Action.objects.get(run=run, action_type="send_reply")
    decide_escalation(
        escalation_id=reply.escalation.pk,
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="wrong tone",
    )
    inline_tasks.drain()
    run.refresh_from_db()
    # The reply's fallback ran: a person has the ticket; nothing was sent to follow up.
    assert run.status == RunStatus.HANDED_OFF
    assert not WorkflowRun.objects.filter(parent=run).exists()


def test_a_workflow_whose_agent_has_no_profile_is_refused_clearly(support):
    with pytest.raises(InvalidInput, match="research-agent"):
        start_run(workflow="mention_research", input=ACME)
    assert not WorkflowRun.objects.exists()


def test_runs_can_be_started_from_the_command_line(research_agent, inline_tasks):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("start_run", "mention_research", input='{"company": "Globex"}', stdout=out)
    assert "mention_research v1: 10 steps" in out.getvalue()
    with pytest.raises(CommandError, match="registered"):
        call_command("start_run", "nope")
    with pytest.raises(CommandError, match="not JSON"):
        call_command("start_run", "mention_research", input="{")
    assert WorkflowRun.objects.count() == 1
