"""Versioned three-dimension state, optimistic concurrency, snapshots, rollback, and the
recovery check a run passes before it resumes."""

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from escalations.actions import decide_escalation
from escalations.models import Escalation, EscalationStatus, Verdict, Via
from workflows.actions import (
    InvalidTransition,
    record_message,
    retry_run,
    rollback_run,
    start_run,
)
from workflows.models import (
    Action,
    ActionStatus,
    DeadLetter,
    Effect,
    RunSnapshot,
    RunStatus,
    StepRun,
    StepStatus,
    TraceKind,
    WorkflowRun,
)
from workflows.state import (
    InvalidState,
    StaleState,
    apply_changes,
    normalise,
    update_state,
    verify_chain,
    write_state,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _auto_policies(policies):
    policies[1].irreversible_requires_review = False
    policies[1].min_confidence = 0.1
    policies[1].save()


@pytest.mark.django_db(transaction=False)
def test_a_change_works_on_a_copy_and_the_state_it_was_given_is_left_as_it_was():
    state = {
        "conversation": {"messages": [{"from": "customer", "tags": ["late"]}]},
        "workspace": {"outputs": {"draft": {"score": 0.5}}},
        "systemic": {},
    }
    given = {"conversation": {"messages": [{"from": "customer", "tags": ["late"]}]}}

    def edit_in_place(conversation):
        conversation["messages"][0]["tags"].append("refund")
        return conversation

    new, changed = apply_changes(state, [("conversation", edit_in_place)])

    assert changed == ["conversation"]
    assert new["conversation"]["messages"][0]["tags"] == ["late", "refund"]
    assert state["conversation"] == given["conversation"]  # nested list untouched
    # The unchanged dimension is a copy too: a later in-place edit of one never shows in the
    # other.
    new["workspace"]["outputs"]["draft"]["score"] = 0.9
    assert state["workspace"]["outputs"]["draft"]["score"] == 0.5


def test_only_what_a_step_writes_through_its_state_view_is_committed(agent, inline_tasks):
    run = start_run(workflow="scribbler", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.state["workspace"]["written"] is True
    assert "scribbled" not in run.state["workspace"]
    # The next step, chained in the same task, is shown the committed state too.
    assert run.state["workspace"]["outputs"]["look"] == {"saw_scribble": False}
    assert verify_chain(run) == []


def test_a_stale_write_is_refused_never_merged(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    state = normalise(run.state)
    with transaction.atomic():
        write_state(
            run=run,
            expected_version=1,
            new_state={**state, "conversation": {"intent": "first"}},
            changed=["conversation"],
        )
    with pytest.raises(StaleState), transaction.atomic():
        write_state(
            run=run,
            expected_version=1,
            new_state={**state, "conversation": {"intent": "second"}},
            changed=["conversation"],
        )
    run.refresh_from_db()
    assert run.state_version == 2
    assert run.state["conversation"] == {"intent": "first"}


def test_concurrent_writers_are_serialised_by_retrying_not_lost(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    barrier = threading.Barrier(4)

    def writer(n):
        barrier.wait()
        try:
            for i in range(5):
                with transaction.atomic():
                    update_state(
                        run=WorkflowRun.objects.get(pk=run.pk),
                        changes=[
                            (
                                "workspace",
                                lambda ws, n=n, i=i: {
                                    **ws,
                                    "notes": [*ws.get("notes", []), f"{n}-{i}"],
                                },
                            )
                        ],
                    )
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.refresh_from_db()
    assert sorted(run.state["workspace"]["notes"]) == sorted(
        f"{n}-{i}" for n in range(4) for i in range(5)
    )
    assert run.state_version == 21
    assert list(
        RunSnapshot.objects.filter(run=run).order_by("version").values_list("version", flat=True)
    ) == list(range(1, 22))
    assert verify_chain(run) == []


def test_systemic_state_holds_references_never_secrets(agent, inline_tasks):
    run = start_run(workflow="stores_a_secret", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "must be a reference like env:NAME" in run.error
    assert "sk-live-123" not in str(run.state)
    with pytest.raises(InvalidState, match="unknown state dimension"):
        write_state(run=run, expected_version=1, new_state={"other": {}}, changed=[])


def test_each_dimension_is_kept_apart_in_its_snapshot(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    start = RunSnapshot.objects.get(run=run, step_name="start")
    assert start.changed == ["conversation", "workspace"]
    assert start.conversation == {"intent": "exercise the DAG"}
    finish = RunSnapshot.objects.get(run=run, step_name="finish")
    assert "systemic" in finish.changed
    assert finish.systemic == {"rate_limits": {"test_api": {"per_minute": 60}}}


def test_a_tampered_version_breaks_the_chain(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert verify_chain(run) == []
    RunSnapshot.objects.filter(run=run, version=2).update(conversation={"intent": "forged"})
    assert verify_chain(run) == ["v2 was altered after it was written"]


def test_the_chain_is_checked_from_its_last_anchor_on(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.state_version >= 4
    # A person vouched for v3 (as after a recovery mismatch): what came before is not
    # checked again, what came after still is.
    RunSnapshot.objects.filter(run=run, version=3).update(anchor=True)
    RunSnapshot.objects.filter(run=run, version=1).update(conversation={"intent": "forged"})
    assert verify_chain(run) == []
    RunSnapshot.objects.filter(run=run, version=4).update(conversation={"intent": "forged"})
    assert verify_chain(run) == ["v4 was altered after it was written"]
    RunSnapshot.objects.filter(run=run, version=2).delete()
    assert "version v2 is missing" in verify_chain(run)


def test_many_runs_chains_read_at_once_are_what_each_would_read(agent, inline_tasks):
    """`chains` (a group round's resumes) reads from each run's last anchor on, as
    verify_chain does for one run."""
    from workflows.state import chains

    runs = [start_run(workflow="fan_out", input={}) for _ in range(3)]
    inline_tasks.drain()
    for run in runs:
        run.refresh_from_db()
    anchored, forged, intact = runs
    RunSnapshot.objects.filter(run=anchored, version=3).update(anchor=True)
    RunSnapshot.objects.filter(run=anchored, version=1).update(conversation={"intent": "x"})
    RunSnapshot.objects.filter(run=forged, version=2).update(conversation={"intent": "x"})
    read = chains([r.pk for r in runs])
    assert read[anchored.pk][0]["version"] == 2
    for run in runs:
        assert verify_chain(run, read[run.pk]) == verify_chain(run)
    assert verify_chain(forged, read[forged.pk]) == ["v2 was altered after it was written"]
    assert verify_chain(intact, read[intact.pk]) == []


def test_rollback_restores_the_snapshot_and_records_the_audit_event(
    agent, policies, ticket, inline_tasks
):
    _auto_policies(policies)
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    effects = Effect.objects.filter(run=run).count()
    assert effects == 3
    # Back to just after classify: the draft, proposals and everything after go.
    target = RunSnapshot.objects.get(run=run, step_name="classify")
    before = run.state_version
    rollback_run(run_id=run.pk, to_version=target.version, actor="root", reason="bad draft")
    run.refresh_from_db()
    assert run.state_version == before + 1
    restored = RunSnapshot.objects.get(run=run, version=run.state_version)
    assert restored.data() == target.data()
    assert run.status == RunStatus.PENDING
    assert set(run.state["workspace"]["outputs"]) == {"read_ticket", "classify"}
    reset = StepRun.objects.filter(run=run, status=StepStatus.PENDING).values_list(
        "name", flat=True
    )
    assert set(reset) == {"draft_reply", "propose_actions", "act", "wrap_up", "schedule_follow_up"}
    audit = run.trace.get(kind=TraceKind.AUDIT)
    assert audit.actor == "root"
    assert audit.data["reason"] == "bad draft"
    assert audit.data["to_version"] == target.version
    assert len(audit.data["effects_kept"]) == 3
    assert "3 effect(s) already applied stay applied" in audit.message
    # The run goes again from there; effects already applied are found, not repeated.
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert Effect.objects.filter(run=run).count() == 3
    assert verify_chain(run) == []


def test_rollback_is_refused_without_a_reason_or_to_a_missing_version(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    with pytest.raises(ValidationError):
        rollback_run(run_id=run.pk, to_version=1, actor="root", reason=" ")
    with pytest.raises(ValidationError):
        rollback_run(run_id=run.pk, to_version=999, actor="root", reason="why not")
    run.refresh_from_db()
    assert not run.trace.filter(kind=TraceKind.AUDIT).exists()


def test_an_admin_retries_a_dead_lettered_run_and_it_finishes(agent, inline_tasks, tmp_path):
    marker = tmp_path / "fixed"
    run = start_run(workflow="always_crashes", input={"fixed_marker": str(marker)})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    with pytest.raises(ValidationError, match="current state"):
        rollback_run(run_id=run.pk, to_version=1, actor="root", reason="no")
    marker.touch()
    retry_run(run_id=run.pk, actor="root", reason="tool is back")
    letter = DeadLetter.objects.get(run=run)
    assert letter.retried_by == "root"
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.error == ""
    assert run.trace.filter(kind=TraceKind.AUDIT, message__contains="tool is back").exists()
    with pytest.raises(InvalidTransition):
        retry_run(run_id=run.pk, actor="root")


def test_a_run_resumed_after_a_decision_records_a_passing_recovery_check(
    policies, ticket, alice, inline_tasks
):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    act = StepRun.objects.get(run=run, name="act")
    reply = Action.objects.get(run=run, action_type="send_reply")
    assert act.waiting_for == {"actions": [str(reply.pk)], "each": True}
    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    check = run.trace.get(kind=TraceKind.RECOVERY)
    assert check.data["ok"] is True and check.data["cause"] == "a decision"
    assert "state chain intact" in check.message
    assert "objective unchanged" in check.message
    assert "1 awaited action(s) unchanged, not yet executed" in check.message


def test_a_run_whose_awaited_action_changed_refuses_to_resume_and_escalates(
    policies, ticket, alice, inline_tasks
):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    reply = Action.objects.get(run=run, action_type="send_reply")
    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    # Between the decision and the resume, someone changes what was approved.
    Action.objects.filter(pk=reply.pk).update(payload={**reply.payload, "to": "evil@example.com"})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    assert "payload changed since it was proposed" in run.attention
    assert not Effect.objects.filter(action=reply).exists()
    check = run.trace.get(kind=TraceKind.RECOVERY)
    assert check.data["ok"] is False
    held = Action.objects.get(run=run, action_type="resume_run")
    assert held.status == ActionStatus.ESCALATED
    assert Escalation.objects.get(action=held).status == EscalationStatus.OPEN

    # A person rejects resuming: the run fails, nothing is sent.
    decide_escalation(
        escalation_id=held.escalation.pk,
        user=alice,
        verdict=Verdict.REJECT,
        via=Via.WEB,
        reason="someone tampered with the reply",
    )
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "someone tampered with the reply" in run.error
    assert not Effect.objects.filter(action=reply).exists()


def test_a_person_can_accept_the_changed_state_and_the_run_continues(
    policies, ticket, alice, inline_tasks
):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    reply = Action.objects.get(run=run, action_type="send_reply")
    decide_escalation(
        escalation_id=reply.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    WorkflowRun.objects.filter(pk=run.pk).update(input={**ticket, "subject": "changed"})
    inline_tasks.drain()
    run.refresh_from_db()
    assert "objective (its input) changed" in run.attention
    held = Action.objects.get(run=run, action_type="resume_run")
    decide_escalation(
        escalation_id=held.escalation.pk, user=alice, verdict=Verdict.APPROVE, via=Via.WEB
    )
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.attention == ""
    assert RunSnapshot.objects.filter(run=run, anchor=True, actor="alice").exists()
    assert verify_chain(run) == []
    assert run.trace.filter(kind=TraceKind.RECOVERY, message__contains="alice accepted").exists()


def test_a_customer_message_is_a_versioned_conversation_write(agent, ticket, inline_tasks):
    run = start_run(workflow="support_triage", input=ticket)
    version = WorkflowRun.objects.get(pk=run.pk).state_version
    record_message(run=run, role="customer", content="Any news?")
    run.refresh_from_db()
    assert run.state_version == version + 1
    assert run.state["conversation"]["messages"][-1]["content"] == "Any news?"
    assert RunSnapshot.objects.get(run=run, version=version + 1).changed == ["conversation"]
    with pytest.raises(ValidationError):
        record_message(run=run, role="robot", content="hi")
