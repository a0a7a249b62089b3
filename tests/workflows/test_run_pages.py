"""The runs pages: plan, steps, state versions and trace for everyone who may see the run;
retry, rollback and cancel for admins only, by POST with CSRF."""

import pytest
from django.test import Client

from workflows.actions import start_run
from workflows.models import DeadLetter, RunSnapshot, RunStatus, TraceKind, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)


def _client(user, *, csrf=False):
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def finished_run(agent, inline_tasks):
    run = start_run(workflow="fan_out", input={})
    inline_tasks.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    return run


def test_the_run_page_shows_plan_steps_versions_and_trace(finished_run, alice):
    page = _client(alice).get(f"/runs/{finished_run.pk}/").content.decode()
    for name in ("start", "gather_a", "gather_b", "gather_c", "join", "finish"):
        assert f'id="step-{name}"' in page
    assert "after gather_a, gather_b, gather_c" in page
    assert page.count('class="mode mode-async"') == 3
    assert f"v{finished_run.state_version}" in page
    assert 'id="state-versions"' in page
    assert "joined 3 results" in page
    # A reviewer sees, but gets no admin controls.
    assert "Roll back to" not in page and "Cancel run" not in page


def test_an_earlier_state_version_can_be_viewed(finished_run, alice):
    page = _client(alice).get(f"/runs/{finished_run.pk}/?v=2").content.decode()
    assert "State at v2" in page
    assert "exercise the DAG" in page


def test_an_admin_sees_rollback_and_a_failed_run_shows_its_error_and_retry(
    agent, inline_tasks, admin_user
):
    run = start_run(workflow="always_crashes", input={})
    inline_tasks.drain()
    page = _client(admin_user).get(f"/runs/{run.pk}/").content.decode()
    assert 'id="dead-letters"' in page
    assert "the tool is down" in page
    assert "Retry failed steps" in page


def test_an_admin_rolls_a_run_back_from_the_page(finished_run, admin_user, inline_tasks):
    client = _client(admin_user)
    response = client.post(
        f"/runs/{finished_run.pk}/rollback/", {"version": 2, "reason": "redo the fan-out"}
    )
    assert response.status_code == 302
    finished_run.refresh_from_db()
    assert finished_run.status == RunStatus.PENDING
    latest = RunSnapshot.objects.filter(run=finished_run).order_by("-version").first()
    assert latest.data() == RunSnapshot.objects.get(run=finished_run, version=2).data()
    audit = finished_run.trace.get(kind=TraceKind.AUDIT)
    assert audit.actor == "root" and audit.data["reason"] == "redo the fan-out"
    inline_tasks.drain()
    finished_run.refresh_from_db()
    assert finished_run.status == RunStatus.SUCCEEDED


def test_a_rollback_without_a_reason_changes_nothing(finished_run, admin_user):
    version = finished_run.state_version
    response = _client(admin_user).post(f"/runs/{finished_run.pk}/rollback/", {"version": 2})
    assert response.status_code == 302
    finished_run.refresh_from_db()
    assert finished_run.state_version == version
    assert finished_run.status == RunStatus.SUCCEEDED


def test_an_admin_retries_a_failed_run_from_the_page(agent, inline_tasks, admin_user):
    run = start_run(workflow="always_crashes", input={})
    inline_tasks.drain()
    response = _client(admin_user).post(f"/runs/{run.pk}/retry/", {"reason": "try again"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert DeadLetter.objects.get(run=run).retried_by == "root"


def test_reviewers_cannot_operate_runs_and_outsiders_cannot_see_them(finished_run, alice, bob):
    for path in ("rollback", "retry", "cancel"):
        assert (
            _client(alice)
            .post(f"/runs/{finished_run.pk}/{path}/", {"version": 2, "reason": "x"})
            .status_code
            == 403
        )
        assert (
            _client(bob)
            .post(f"/runs/{finished_run.pk}/{path}/", {"version": 2, "reason": "x"})
            .status_code
            == 404
        )
    assert _client(bob).get(f"/runs/{finished_run.pk}/").status_code == 404
    finished_run.refresh_from_db()
    assert not finished_run.trace.filter(kind=TraceKind.AUDIT).exists()


def test_a_post_without_csrf_token_is_refused(finished_run, admin_user):
    response = _client(admin_user, csrf=True).post(
        f"/runs/{finished_run.pk}/rollback/", {"version": 2, "reason": "x"}
    )
    assert response.status_code == 403
    assert WorkflowRun.objects.get(pk=finished_run.pk).status == RunStatus.SUCCEEDED


def test_an_admin_cancels_a_waiting_run(policies, ticket, admin_user, inline_tasks):
    run = start_run(workflow="support_triage", input=ticket)
    inline_tasks.drain()
    response = _client(admin_user).post(f"/runs/{run.pk}/cancel/", {"reason": "duplicate"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.actions.get(action_type="send_reply").escalation.status == "cancelled"


def test_the_run_list_filters_by_workflow_and_status(finished_run, agent, alice, inline_tasks):
    start_run(workflow="always_crashes", input={})
    inline_tasks.drain()
    client = _client(alice)
    page = client.get("/runs/?workflow=fan_out").content.decode()
    assert "Fan out" in page or "fan_out" in page
    assert "always_crashes v1" not in page
    page = client.get("/runs/?status=failed").content.decode()
    assert "always_crashes v1" in page and "fan_out v1" not in page
