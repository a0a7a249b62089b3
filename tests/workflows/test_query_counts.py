"""An engine step's commit, counted in queries: the cost every step of every run pays."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.queries import statements
from workflows.actions import start_run

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_steps_claim_and_commit_cost_ten_queries_in_two_transactions(agent, inline_tasks):
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
        # The run again, locked (the fence's precondition), then the fence: the result is
        # written only if the lease is still ours. One statement.
        "WITH workflows_workflowrun",
        # State + version in the run's UPDATE, and the new version's snapshot: one statement.
        "WITH workflows_workflowrun",
        "SELECT workflows_steprun",  # are the siblings done? (not yet: no join here)
        "COMMIT",
    ]


def _peer_policy(outcome: str, workflow: str) -> None:
    from bench.peers.caliber_flow import ACTION_TYPE
    from escalations.models import AutonomyPolicy
    from escalations.policy import clear_cache

    AutonomyPolicy.objects.all().delete()
    AutonomyPolicy.objects.create(
        name="peer",
        workflow=workflow,
        action_type=ACTION_TYPE,
        outcome=outcome,
        min_confidence=0.0,
        irreversible_requires_review=False,
    )
    clear_cache()


def test_a_three_step_run_through_the_drain_costs_the_engine_four_statements_a_step(
    agent, inline_tasks
):
    """The peer benchmark's auto run (propose -> gate -> execute, all inline) from one
    drain: the claim; a first round (run, steps, claim + round); then each step's commit
    is fence, steps, and one write of the next claim + the run + its snapshot (+ the trace).
    The step bodies' own statements (the action, the ledger) are theirs, not the engine's."""
    from bench.peers.caliber_flow import AUTO
    from workflows import engine
    from workflows.models import PolicyOutcome, RunStatus

    _peer_policy(PolicyOutcome.AUTO, AUTO)
    run = start_run(workflow=AUTO, input={"item": "x"})
    inline_tasks.sent.clear()
    with CaptureQueriesContext(connection) as captured:
        assert engine.drain_runs() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    engine_statements = [
        s for s in statements(captured) if "workflowrun" in s or "steprun" in s or "snapshot" in s
    ]
    assert engine_statements == [
        "WITH workflows_workflowrun",  # the drain's claim: the run's lease
        "SELECT workflows_workflowrun",  # round 1: the run, locked, with its agent
        "SELECT workflows_steprun",  # its steps, locked
        "WITH workflows_steprun",  # propose claimed + the run's round, one statement
        # propose committed: fence, steps, gate claimed + run + snapshot
        "WITH workflows_workflowrun",
        "SELECT workflows_steprun",
        "WITH workflows_steprun",
        # gate committed
        "WITH workflows_workflowrun",
        "SELECT workflows_steprun",
        "WITH workflows_steprun",
        # execute committed: the run finished with its last state
        "WITH workflows_workflowrun",
        "SELECT workflows_steprun",
        "WITH workflows_workflowrun",
    ]
    assert statements(captured).count("COMMIT") == 4


def test_the_engines_statements_are_prepared_once_per_connection(agent, inline_tasks):
    """workflows.hotsql's statements are parsed once per connection, then only bound and
    executed: another run of the same workflow prepares nothing new, and each prepared
    statement it used was executed again from the server's copy. (Django turns psycopg's
    prepared statements off unless the connection's prepare_threshold is set: they were
    silently parsed and planned again every time, a third of PostgreSQL's CPU per run.)"""
    from bench.peers.caliber_flow import AUTO
    from workflows import engine
    from workflows.models import PolicyOutcome, RunStatus

    def prepared() -> dict[str, int]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements"
            )
            return dict(cur.fetchall())

    _peer_policy(PolicyOutcome.AUTO, AUTO)
    # The first run also prepares what only a first run sends (the policy set's stamp).
    runs = [start_run(workflow=AUTO, input={"item": "first"})]
    assert engine.drain_runs() == 1
    runs.append(start_run(workflow=AUTO, input={"item": "second"}))
    assert engine.drain_runs() == 1
    before = prepared()
    assert any("workflows_steprun" in sql for sql in before), before

    runs.append(start_run(workflow=AUTO, input={"item": "third"}))
    assert engine.drain_runs() == 1
    after = prepared()
    for run in runs:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
    assert after.keys() == before.keys()
    reused = [sql for sql, n in after.items() if n > before[sql]]
    assert len(reused) >= 5, reused


def test_prepared_sql_gets_postgresqls_placeholders_once_per_text():
    from workflows import hotsql

    sql = "SELECT %s::int + %s::int, '100%%' WHERE %s"
    assert hotsql._native(sql) == "SELECT $1::int + $2::int, '100%' WHERE $3"
    assert hotsql._native(sql) is hotsql._native(sql)  # converted once
    with pytest.raises(ValueError, match="only %s placeholders"):
        hotsql._native("SELECT %(name)s")


def test_a_list_parameter_reads_back_as_psycopgs_own_dumping_of_it():
    """hotsql sends a list of one element type as an array literal it builds itself: what
    PostgreSQL reads from it is what it reads from psycopg's own dumping of the same list —
    quotes, backslashes, braces, commas, spaces, the word NULL and None elements included —
    and a list it cannot build (mixed, naive datetimes, past int8) is psycopg's."""
    import uuid
    from datetime import UTC, datetime, timedelta, timezone

    from psycopg.types.json import Jsonb

    from workflows import hotsql
    from workflows.models import StepStatus

    tricky = ['a "quoted" word', "back\\slash", "{braces}", "a,b", " padded ", "NULL", "", "é"]
    cases = [
        ("uuid", [uuid.uuid4(), None, uuid.uuid4()], True),
        ("text", [*tricky, None], True),
        ("text", [StepStatus.SUCCEEDED, "waiting", None], True),
        ("int8", [0, -(2**63), 2**63 - 1, None], True),
        (
            "timestamptz",
            [
                datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
                None,
                datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
            ],
            True,
        ),
        ("jsonb", [Jsonb({"k": tricky, "n": [1, 2.5, None]}), None, Jsonb("x")], True),
        ("numeric", [2**70, 1], False),
        ("timestamp", [datetime(2026, 12, 7, 1, 2, 3)], False),
        ("text", [], False),
    ]
    for pg_type, values, built in cases:
        assert isinstance(hotsql._array(values), hotsql._Array) is built, (pg_type, values)
        sql = f"SELECT %s::{pg_type}[]::text, %s::{pg_type}[] = %s::{pg_type}[]"
        [(text, _)] = hotsql.rows(sql, [values, values, values])
        with connection.cursor() as cursor:  # psycopg's own dumping, client-side binding
            cursor.execute(f"SELECT %s::{pg_type}[]::text", [values])
            [(expected,)] = cursor.fetchall()
        assert text == expected, pg_type


_JSON_TEXTS = [
    "123456789012345678901234567890",  # past 64 bits: orjson would give a float
    "-9999999999999999999",
    "18446744073709551615",
    "9223372036854775807",
    "1" + "0" * 400,  # how PostgreSQL's jsonb writes 1e400 back
    "1e400",
    '"\\ud800"',  # a lone surrogate
    '{"a": 1.0, "b": [1, 2.5e-7, -0.0, true, null], "c": "é\\n\\"q\\""}',
    '{"digits": "0123456789012345678901"}',
    "0.1234567890123456789",
]


def test_a_jsonb_value_reads_as_json_reads_it():
    """hotsql.loads goes through orjson where that gives json's value and to json where it
    would not (big integers, texts orjson refuses): the same value and the same types."""
    import json

    from workflows import hotsql

    for text in _JSON_TEXTS:
        assert json.dumps(hotsql.loads(text)) == json.dumps(json.loads(text)), text
    assert hotsql.loads(b'{"a": 1}') == {"a": 1}
    assert hotsql.loads({"already": "decoded"}) == {"already": "decoded"}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_json_value_reads_back_as_json_reads_it(value):
    import json

    from workflows import hotsql

    text = json.dumps(value)
    assert json.dumps(hotsql.loads(text)) == json.dumps(json.loads(text))


def test_a_row_read_by_prepared_sql_is_a_model_instance_as_the_orm_builds_it(agent):
    """Built without Model.__init__: loaded state, values as read, a column not read left
    deferred (loaded on first use), and related objects cached as the ORM caches them."""
    from workflows import hotsql
    from workflows.models import WorkflowRun

    run = start_run(workflow="fan_out", input={"subject": "s"})
    columns = hotsql.Columns(WorkflowRun, "r", exclude=("plan",))
    [row] = hotsql.rows(
        f"SELECT {columns.sql} FROM workflows_workflowrun r WHERE r.id = %s", [run.pk]
    )
    built = columns.build(row)
    assert type(built) is WorkflowRun
    assert (built.pk, built.input, built.agent_id) == (run.pk, {"subject": "s"}, run.agent_id)
    assert not built._state.adding and built._state.db == "default"
    assert "plan" in built.get_deferred_fields()
    with CaptureQueriesContext(connection) as loaded:
        assert built.plan == WorkflowRun.objects.get(pk=run.pk).plan
    assert len(loaded) == 2  # the deferred column, then the check's own read
    assert built.agent == run.agent


def test_an_instance_built_for_a_write_is_the_one_model_init_builds(agent):
    """rows.new: the same values and INSERT parameters as Model(**kwargs), defaults filled,
    a relation given as an instance cached; a wrong keyword refused; through Model.__init__
    while something listens to its signals."""
    from django.db.models.signals import post_init

    from workflows import rows
    from workflows.models import Action, TraceEvent, TraceKind

    run = start_run(workflow="fan_out", input={"subject": "s"})
    fields = {
        "run": run,
        "step_name": "draft",
        "agent": run.agent,
        "action_type": "reply",
        "payload": {"body": "hi"},
        "confidence": 0.5,
        "rationale": "r",
        "idempotency_key": "k",
    }
    built, inited = rows.new(Action, **fields), Action(**fields)
    assert built._state.adding
    assert built._state.db == inited._state.db  # the related instance's, as its setter sets
    assert built.pk is not None and built.pk != inited.pk  # each its own default uuid4
    built.pk, built.created_at = inited.pk, inited.created_at

    def written(obj):
        sql, params = rows.values(obj)
        return sql, [getattr(p, "obj", p) for p in params]  # a Jsonb holds its value as .obj

    assert written(built) == written(inited)
    assert (built.run_id, built.agent_id, built.status) == (run.pk, run.agent_id, "proposed")
    with CaptureQueriesContext(connection) as read:
        assert built.run is run and built.agent is run.agent
    assert len(read) == 0

    event = rows.new(TraceEvent, run_id=run.pk, kind=TraceKind.SYSTEM, message="m")
    assert (event.data, event.actor, event.step_name) == ({}, "", "")
    assert event.created_at is not None

    with pytest.raises(TypeError, match="colour"):
        rows.new(TraceEvent, run_id=run.pk, kind=TraceKind.SYSTEM, message="m", colour="red")

    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(listener, sender=TraceEvent)
    try:
        listened = rows.new(TraceEvent, run_id=run.pk, kind=TraceKind.SYSTEM, message="m")
    finally:
        post_init.disconnect(listener, sender=TraceEvent)
    assert seen == [listened]


def test_an_updates_assignments_are_what_each_fields_own_methods_make_of_it(agent):
    """hotsql.assignments (a run's state write, hotsql.save) passes the same values through
    as rows.values does, and prepares every other one with the field's get_db_prep_save."""
    from datetime import UTC, datetime

    from django.db import connection as db
    from django.utils import timezone

    from workflows import hotsql
    from workflows.models import RunStatus, WorkflowRun

    run = start_run(workflow="fan_out", input={"subject": "s"})
    values = {
        "updated_at": timezone.now(),
        "finished_at": None,
        "state": {"conversation": {}, "workspace": {"n": 1}, "systemic": {}},
        "state_version": 7,
        "status": RunStatus.RUNNING,
        "lease_owner": "owner",
        "lease_expires_at": datetime(2026, 12, 7, 12, 0),  # naive: made aware, with a warning
        "agent_id": run.agent_id,
        "id": run.pk,
    }
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        sets, params = hotsql.assignments(run, values)
    assert sets.split(", ")[0] == "updated_at = %s" and "agent_id = %s" in sets
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        own = [
            WorkflowRun._meta.get_field(name).get_db_prep_save(value, db)
            for name, value in values.items()
        ]
    own = [getattr(p, "value", p) for p in own]  # an enum member is sent as its value
    assert [getattr(p, "obj", p) for p in params] == [getattr(p, "obj", p) for p in own]
    assert params[6] == datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_rows_values_are_what_each_fields_own_methods_make_of_it(agent):
    """rows.values passes a str, bool, UUID or aware datetime through as it is where the
    field's pre_save and get_db_prep_save would (exact field classes only); every other value
    goes through them. The parameters are the same either way, for each model the engine writes."""
    from datetime import datetime

    from django.db import connection as db

    from workflows import rows
    from workflows.models import Action, RunSnapshot, StepRun, TraceEvent, TraceKind, WorkflowRun

    run = WorkflowRun.objects.get(pk=start_run(workflow="fan_out", input={"subject": "s"}).pk)
    instances = [
        run,
        *StepRun.objects.filter(run=run),
        *RunSnapshot.objects.filter(run=run),
        rows.new(TraceEvent, run=run, kind=TraceKind.SYSTEM, message="m", actor="alice"),
        rows.new(
            Action,
            run=run,
            step_name="s",
            agent=run.agent,
            action_type="reply",
            payload={"body": "hi"},
            confidence=0.5,
            rationale="r",
            idempotency_key="k",
            audit_sampled=True,
        ),
    ]
    for obj in instances:
        _, params = rows.values(obj)
        own = [
            f.get_db_prep_save(f.pre_save(obj, True), db)
            for f, _, _ in rows._written(type(obj), db.vendor)
        ]
        unwrapped = [[getattr(p, "obj", p) for p in ps] for ps in (params, own)]
        assert unwrapped[0] == unwrapped[1], type(obj).__name__
    plain = {f.name for f, _, kind in rows._written(Action, db.vendor) if kind is not None}
    assert {"id", "run", "step_name", "rationale", "audit_sampled", "created_at"} <= plain
    assert not {"agent", "payload", "confidence"} & plain  # bigint, JSON, float
    # A naive datetime is no datetime field's plain value: the field warns and makes it aware.
    naive = rows.new(TraceEvent, run=run, kind=TraceKind.SYSTEM, message="m", actor="a")
    naive.created_at = datetime(2026, 12, 7, 12, 0)
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        _, params = rows.values(naive)
    [written] = [p for p in params if isinstance(p, datetime)]
    assert written.tzinfo is not None
