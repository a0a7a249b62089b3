"""An engine step's commit, counted in queries: the cost every step of every run pays."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.support.queries import statements
from workflows.actions import start_run

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_steps_claim_and_commit_cost_twelve_queries_in_two_transactions(
    agent, inline_tasks
):
    """gather_a of the fan-out workflow: one effect through the ledger, one state write,
    and siblings still running (so no join in this commit)."""
    start_run(workflow="fan_out", input={})
    captured = None
    while inline_tasks.sent:
        inline_tasks.sent.sort(key=lambda t: t[0])
        _, task, args = inline_tasks.sent.pop(0)
        if task == "workflows.tasks.run_step" and args[1] == "gather_a" and captured is None:
            with CaptureQueriesContext(connection) as captured:
                inline_tasks.deliver(task, args)
        else:
            inline_tasks.deliver(task, args)
    assert captured is not None
    assert statements(captured) == [
        "BEGIN",  # the claim
        "SELECT workflows_workflowrun",  # the run, FOR NO KEY UPDATE: not gone, not held
        "SELECT workflows_steprun",  # the step, locked
        "UPDATE workflows_steprun",  # running, under this attempt's lease
        "COMMIT",
        "BEGIN",  # the step runs and commits in one transaction (its ledger rows with it)
        "SELECT workflows_effect",  # the ledger: was this effect applied before?
        "INSERT workflows_effect",  # ... no: the tool was called, its row recorded
        "SELECT workflows_workflowrun",  # the run again, locked: the fence's precondition
        "UPDATE workflows_steprun",  # the fence: succeeded only if the lease is still ours
        "UPDATE workflows_workflowrun",  # state + version, in the same UPDATE
        "INSERT workflows_runsnapshot",  # the new state version's snapshot
        "SELECT workflows_steprun",  # are the siblings done? (not yet: no join here)
        "COMMIT",
    ]
