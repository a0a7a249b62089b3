"""A run's state: three dimensions kept apart, every write versioned and snapshotted.

- conversation: messages and intent (what was said, what the run is for);
- workspace: documents and intermediate outputs (each step's output under "outputs");
- systemic: references to credentials, rate limits, connected systems — references only,
  never secrets.

A write names the version it read. The conditional UPDATE of `WorkflowRun.state_version` is
the referee (and the unique (run, version) snapshot row its backstop): a stale write is
refused with `StaleState`; `update_state` then re-reads and re-applies its change function,
so concurrent writers are serialised, never silently merged.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import hotsql, rows
from .models import RunSnapshot, WorkflowRun
from .specs import digest

log = logging.getLogger(__name__)

DIMENSIONS = ("conversation", "workspace", "systemic")
SYSTEMIC_KEYS = ("credentials", "rate_limits", "connected_systems")
# A credential is named, never stored: "env:SLACK_BOT_TOKEN", "vault:crm/api-key".
CREDENTIAL_REF = re.compile(r"^(env|vault|secret):[A-Za-z0-9_./-]{1,200}$")
MAX_CAS_RETRIES = 20

State = dict[str, dict[str, Any]]


class StaleState(Exception):
    """The state changed since it was read; the write was refused."""


class InvalidState(ValueError):
    pass


def empty_state() -> State:
    return {"conversation": {}, "workspace": {}, "systemic": {}}


def normalise(state: Mapping[str, Any]) -> State:
    out = empty_state()
    for dim in DIMENSIONS:
        value = state.get(dim)
        if isinstance(value, dict):
            out[dim] = value
    return out


def validate(state: State) -> None:
    """Keep the dimensions apart and secrets out."""
    extra = set(state) - set(DIMENSIONS)
    if extra:
        raise InvalidState(f"unknown state dimension(s): {', '.join(sorted(extra))}")
    for dim in DIMENSIONS:
        if not isinstance(state.get(dim), dict):
            raise InvalidState(f"state dimension {dim} must be an object")
    systemic = state["systemic"]
    unknown = set(systemic) - set(SYSTEMIC_KEYS)
    if unknown:
        raise InvalidState(
            f"systemic state holds only {', '.join(SYSTEMIC_KEYS)}; "
            f"got {', '.join(sorted(unknown))}"
        )
    creds = systemic.get("credentials", {})
    if not isinstance(creds, dict):
        raise InvalidState("systemic credentials must map a name to a reference")
    for name, ref in creds.items():
        if not isinstance(ref, str) or not CREDENTIAL_REF.match(ref):
            raise InvalidState(
                f"credential {name!r} must be a reference like env:NAME or vault:path, "
                "never the secret itself"
            )


def chain_digest(parent_digest: str, data: State) -> str:
    return digest({"parent": parent_digest, "data": data})


@dataclass
class StateView:
    """What a step sees: the state as of `version`, plus the writes it asks for.

    Writes are buffered and applied when the step commits, as change functions re-applied
    on top of whatever version is current then (so parallel steps never wait on each other's
    open transactions, and never overwrite each other's changes).
    """

    version: int
    data: State
    changes: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = field(
        default_factory=list
    )

    @property
    def conversation(self) -> dict[str, Any]:
        return self.data["conversation"]

    @property
    def workspace(self) -> dict[str, Any]:
        return self.data["workspace"]

    @property
    def systemic(self) -> dict[str, Any]:
        return self.data["systemic"]

    def update(self, dimension: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        if dimension not in DIMENSIONS:
            raise InvalidState(f"unknown state dimension {dimension!r}")
        self.changes.append((dimension, change))

    def merge(self, dimension: str, values: dict[str, Any]) -> None:
        self.update(dimension, lambda current: {**current, **values})

    def append(self, dimension: str, key: str, item: Any) -> None:
        self.update(dimension, lambda current: {**current, key: [*current.get(key, []), item]})


def _copied(value: Any) -> Any:
    """A deep copy of state (JSON: objects, arrays, scalars), as copy.deepcopy makes it but a
    few times faster (a step's commit copies the state once per change). Anything else a
    caller put in is copied by copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return copy.deepcopy(value)


def apply_changes(
    state: State, changes: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]
) -> tuple[State, list[str]]:
    new = _copied(state)
    changed: list[str] = []
    for dim, change in changes:
        before = new[dim]
        after = change(_copied(before))
        if not isinstance(after, dict):
            raise InvalidState(f"a change to {dim} must return an object")
        if after != before:
            new[dim] = after
            if dim not in changed:
                changed.append(dim)
    validate(new)
    return new, changed


def write_state(
    *,
    run: WorkflowRun,
    expected_version: int,
    new_state: State,
    changed: list[str],
    step_name: str = "",
    reason: str = "",
    actor: str = "",
    anchor: bool = False,
    savepoint: bool = True,
    also: Sequence[str] = (),
    statements: Sequence[tuple[str, Sequence[Any]]] = (),
) -> RunSnapshot | None:
    """Write version expected_version + 1, or raise StaleState. Must run inside a transaction.

    A non-durable run (benchmark's no-op store) keeps only the current state: no snapshot.
    `savepoint=False` when the caller holds the run's row lock and read the state under it:
    no writer can then get in between, and the two round trips of a savepoint buy nothing
    (a snapshot that exists anyway means a broken chain: the error aborts the transaction).
    `also`: more of the run's fields to write in the same UPDATE, from `run`'s attributes.
    `statements`: more writes (idempotent SQL, with their parameters) for the same round trip.

    On PostgreSQL the run's UPDATE and the snapshot's INSERT are one prepared statement (the
    snapshot inserted only if the UPDATE found the version it expected).
    """
    validate(new_state)
    version = expected_version + 1
    values: dict[str, Any] = {"updated_at": timezone.now()}
    values |= {f: getattr(run, f) for f in also}
    values |= {"state": new_state, "state_version": version}
    write: Callable[[], RunSnapshot | None]
    if hotsql.enabled():
        parent = "" if anchor or not run.durable else _parent_digest(run, expected_version)

        def write_pg() -> RunSnapshot | None:
            return _write_pg(
                run,
                expected_version,
                values,
                statements,
                parent=parent,
                changed=changed,
                step_name=step_name,
                reason=reason,
                actor=actor,
                anchor=anchor,
            )

        write = write_pg
    else:
        for sql, params in statements:
            hotsql.rows(sql, params)
        if not run.durable:
            if not WorkflowRun.objects.filter(pk=run.pk, state_version=expected_version).update(
                **values
            ):
                raise StaleState(f"run {run.pk} state is past v{expected_version}")
            run.state, run.state_version = new_state, version
            return None
        parent = "" if anchor else _parent_digest(run, expected_version)

        def write_orm() -> RunSnapshot:
            if not WorkflowRun.objects.filter(pk=run.pk, state_version=expected_version).update(
                **values
            ):
                raise StaleState(f"run {run.pk} state is past v{expected_version}")
            return _snapshot(
                run=run,
                version=version,
                state=new_state,
                changed=changed,
                parent=parent,
                step_name=step_name,
                reason=reason,
                actor=actor,
                anchor=anchor,
            )

        write = write_orm
    if savepoint and run.durable:
        try:
            # One savepoint for both rows: a snapshot that already exists undoes the UPDATE.
            with transaction.atomic():
                snapshot = write()
        except IntegrityError:
            raise StaleState(f"run {run.pk} already has state v{version}") from None
    else:
        snapshot = write()
    run.state, run.state_version = new_state, version
    return snapshot


_SNAPSHOT_COLUMNS = (
    "run_id, version, conversation, workspace, systemic, changed, step_name, reason, actor,"
    " parent_digest, digest, anchor, created_at"
)


def _write_pg(
    run: WorkflowRun,
    expected_version: int,
    values: dict[str, Any],
    statements: Sequence[tuple[str, Sequence[Any]]],
    *,
    parent: str,
    changed: list[str],
    step_name: str,
    reason: str,
    actor: str,
    anchor: bool,
) -> RunSnapshot | None:
    """The run's conditional UPDATE and (durable runs) its snapshot's INSERT, one statement."""
    sets, params = hotsql.assignments(run, values)
    ctes = [f"also{i} AS ({sql})" for i, (sql, _) in enumerate(statements)]
    # The columns are the model's, named by the engine (never input); the values are bound.
    update = f"UPDATE workflows_workflowrun SET {sets} WHERE id = %s"  # noqa: S608
    update += " AND state_version = %s RETURNING id"
    params = [*hotsql.also_params(statements), *params, run.pk, expected_version]
    if not run.durable:
        sql = ("WITH " + ", ".join(ctes) + " " if ctes else "") + update
        if not hotsql.rows(sql, params):
            raise StaleState(f"run {run.pk} state is past v{expected_version}")
        return None
    state: State = values["state"]
    version = expected_version + 1
    snapshot = _unsaved_snapshot(
        run, version, state, changed, parent, step_name, reason, actor, anchor
    )
    digest = snapshot.digest
    ctes.append(f"u AS ({update})")
    sql = (
        f"WITH {', '.join(ctes)} INSERT INTO workflows_runsnapshot"  # noqa: S608
        f" ({_SNAPSHOT_COLUMNS})"
        " SELECT id, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM u RETURNING id"
    )
    found = hotsql.rows(
        sql,
        [
            *params,
            version,
            hotsql.jsonb(snapshot.conversation),
            hotsql.jsonb(snapshot.workspace),
            hotsql.jsonb(snapshot.systemic),
            hotsql.jsonb(snapshot.changed),
            snapshot.step_name,
            snapshot.reason,
            snapshot.actor,
            snapshot.parent_digest,
            snapshot.digest,
            snapshot.anchor,
            snapshot.created_at,
        ],
    )
    if not found:
        raise StaleState(f"run {run.pk} state is past v{expected_version}")
    snapshot.pk = found[0][0]
    snapshot._state.adding = False
    key = (run.pk, version)
    transaction.on_commit(lambda: _remember_digest(key, digest))
    return snapshot


def _unsaved_snapshot(
    run: WorkflowRun,
    version: int,
    state: State,
    changed: list[str],
    parent: str,
    step_name: str,
    reason: str,
    actor: str,
    anchor: bool,
) -> RunSnapshot:
    """Version `version`'s snapshot row, chained to `parent` (its digest computed), unsaved."""
    return rows.new(
        RunSnapshot,
        run=run,
        version=version,
        conversation=state["conversation"],
        workspace=state["workspace"],
        systemic=state["systemic"],
        changed=changed,
        step_name=step_name,
        reason=reason[:300],
        actor=actor,
        parent_digest=parent,
        digest=chain_digest(parent, state),
        anchor=anchor,
    )


def _snapshot(
    *,
    run: WorkflowRun,
    version: int,
    state: State,
    changed: list[str],
    parent: str = "",
    step_name: str = "",
    reason: str = "",
    actor: str = "",
    anchor: bool = False,
) -> RunSnapshot:
    """Write version `version`'s snapshot, chained to `parent`; its digest is remembered
    once committed (a rolled-back attempt's snapshot must never be taken as a parent)."""
    snapshot = _unsaved_snapshot(
        run, version, state, changed, parent, step_name, reason, actor, anchor
    )
    snapshot.save(force_insert=True)
    digest = snapshot.digest
    key = (run.pk, version)
    transaction.on_commit(lambda: _remember_digest(key, digest))
    return snapshot


def write_first_state(*, run: WorkflowRun, changed: list[str], reason: str = "") -> None:
    """Snapshot version 1 of a run just created (in this transaction) with its initial state
    and `state_version=1`: what `write_state(expected_version=0)` does, minus the UPDATE and
    the savepoint a brand-new row cannot need."""
    state = normalise(run.state)
    validate(state)
    if run.state_version != 1:
        raise StaleState(f"run {run.pk} was not created at state v1")
    if not run.durable:
        return
    _snapshot(run=run, version=1, state=state, changed=changed, reason=reason)


# Digests of committed snapshots, by (run, version): a committed snapshot never changes, so
# the next write of the run in this process need not read its parent's digest back.
_DIGESTS: dict[tuple[Any, int], str] = {}
_DIGESTS_MAX = 4096


def remember_digest(run_id: Any, version: int, digest: str) -> None:
    """The digest of the run's committed snapshot of `version` (read by a caller anyway):
    the next write of the run in this process need not read it back."""
    _remember_digest((run_id, version), digest)


def _remember_digest(key: tuple[Any, int], digest: str) -> None:
    if len(_DIGESTS) >= _DIGESTS_MAX:
        # The oldest first (a dict keeps insertion order): the runs still going are the
        # recent ones.
        del _DIGESTS[next(iter(_DIGESTS))]
    _DIGESTS[key] = digest


def _parent_digest(run: WorkflowRun, version: int) -> str:
    if version == 0:
        return ""
    cached = _DIGESTS.get((run.pk, version))
    if cached is not None:
        return cached
    return (
        RunSnapshot.objects.filter(run=run, version=version)
        .values_list("digest", flat=True)
        .first()
        or ""
    )


def update_state(
    *,
    run: WorkflowRun,
    changes: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]],
    step_name: str = "",
    reason: str = "",
    actor: str = "",
    current: tuple[dict[str, Any], int] | None = None,
    locked: bool = False,
    also: Sequence[str] = (),
    statements: Sequence[tuple[str, Sequence[Any]]] = (),
) -> RunSnapshot | None:
    """Apply change functions to the current state, retrying on a stale read.

    Must run inside a transaction. Each retry re-reads the latest committed version (READ
    COMMITTED gives every statement a fresh snapshot) and re-applies every change to it.
    `current`: (state, version) the caller read under the run's row lock in this transaction,
    used for the first attempt instead of reading them again. `locked`: the caller holds that
    lock (see `write_state`'s savepoint). `also`: more of the run's fields to write with the
    state (see `write_state`), or on their own if the state did not change. `statements`:
    more idempotent writes for the same round trip (see `write_state`).
    """
    for attempt in range(MAX_CAS_RETRIES):
        if attempt == 0 and current is not None:
            raw, version = current
        else:
            read = WorkflowRun.objects.filter(pk=run.pk).values("state", "state_version").get()
            raw, version = read["state"], int(read["state_version"])
        state = normalise(raw)
        new, changed = apply_changes(state, changes)
        if not changed and attempt == 0 and version > 0:
            run.state, run.state_version = state, version
            if also and hotsql.enabled():
                hotsql.save(run, list(also), also=statements)
            else:
                for sql, params in statements:
                    hotsql.rows(sql, params)
                if also:
                    run.save(update_fields=list(also))
            return None
        try:
            # write_state undoes its own partial work on a conflict (its savepoint).
            return write_state(
                run=run,
                expected_version=version,
                new_state=new,
                changed=changed or list(DIMENSIONS),
                step_name=step_name,
                reason=reason,
                actor=actor,
                savepoint=not locked,
                also=also,
                statements=statements,
            )
        except StaleState:
            log.info("stale state write on run %s (attempt %d); re-reading", run.pk, attempt + 1)
    raise StaleState(f"run {run.pk}: gave up after {MAX_CAS_RETRIES} conflicting writes")


_CHAIN_KEYS = (
    "version",
    "conversation",
    "workspace",
    "systemic",
    "parent_digest",
    "digest",
    "anchor",
)
# One run's chain (`{runs}`: "= %s"), or many runs' at once ("= ANY(%s)": a group round's
# resumes, `chains`), each row with its run's id first.
_CHAIN_OF = (
    f"SELECT s.run_id, {', '.join('s.' + k for k in _CHAIN_KEYS)}"  # noqa: S608 (fixed names)
    " FROM workflows_runsnapshot s WHERE s.run_id {runs} AND s.version >="
    " COALESCE((SELECT max(a.version) FROM workflows_runsnapshot a WHERE a.run_id = s.run_id"
    " AND a.anchor), 1) - 1 ORDER BY s.run_id, s.version"
)
_CHAIN = _CHAIN_OF.format(runs="= %s")
_CHAINS = _CHAIN_OF.format(runs="= ANY(%s)")


def _chain_row(values: Sequence[Any]) -> dict[str, Any]:
    return {
        k: hotsql.loads(v) if k in DIMENSIONS else v
        for k, v in zip(_CHAIN_KEYS, values, strict=True)
    }


def chains(run_ids: Sequence[Any]) -> dict[Any, list[dict[str, Any]]]:
    """What `verify_chain` reads, for every run of `run_ids`, in one statement (PostgreSQL):
    for a caller that checks many runs under locks it already holds."""
    found: dict[Any, list[dict[str, Any]]] = {r: [] for r in run_ids}
    for row in hotsql.rows(_CHAINS, [list(run_ids)]):
        found[row[0]].append(_chain_row(row[1:]))
    for run_id, chain in found.items():
        if chain:
            # Committed: the next write's parent, not read again.
            _remember_digest((run_id, chain[-1]["version"]), chain[-1]["digest"])
    return found


def _chain_rows(run: WorkflowRun) -> list[dict[str, Any]]:
    """The snapshots from the version before the last anchor on, in order."""
    if hotsql.enabled():
        return [_chain_row(row[1:]) for row in hotsql.rows(_CHAIN, [run.pk])]
    last_anchor = (
        RunSnapshot.objects.filter(run=run, anchor=True).order_by("-version").values("version")[:1]
    )
    return list(
        RunSnapshot.objects.filter(
            run=run, version__gte=Coalesce(Subquery(last_anchor), Value(1)) - 1
        )
        .order_by("version")
        .values(*_CHAIN_KEYS)
    )


def verify_chain(run: WorkflowRun, rows: list[dict[str, Any]] | None = None) -> list[str]:
    """Problems with the run's version chain since its last anchor; empty when intact.
    `rows`: the chain as `chains` read it, under the run's lock, for this check."""
    if not run.durable:
        return []
    problems: list[str] = []
    # From the version before the last anchor on (the one before it only to see that the
    # anchor follows on): a long run does not read its whole history at every check.
    if rows is None:
        rows = _chain_rows(run)
    if not rows:
        return [] if run.state_version == 0 else [f"no snapshots but state is v{run.state_version}"]
    start = max((i for i, r in enumerate(rows) if r["anchor"]), default=0)
    if start == 0 and rows[0]["anchor"] and rows[0]["version"] > 1:
        # Rows are only ever added: an anchor with no version before it lost one.
        problems.append(f"version v{rows[0]['version'] - 1} is missing")
    expected_parent = rows[start]["parent_digest"]
    for i, row in enumerate(rows[start:], start=start):
        if i > 0 and row["version"] != rows[i - 1]["version"] + 1:
            problems.append(f"version v{rows[i - 1]['version'] + 1} is missing")
        if row["parent_digest"] != expected_parent:
            problems.append(f"v{row['version']} does not follow v{row['version'] - 1}")
        data: State = {
            "conversation": row["conversation"],
            "workspace": row["workspace"],
            "systemic": row["systemic"],
        }
        if chain_digest(row["parent_digest"], data) != row["digest"]:
            problems.append(f"v{row['version']} was altered after it was written")
        expected_parent = row["digest"]
    last = rows[-1]
    if last["version"] != run.state_version:
        problems.append(
            f"the run says v{run.state_version} but the last snapshot is v{last['version']}"
        )
    elif chain_digest(last["parent_digest"], normalise(run.state)) != last["digest"]:
        problems.append("the current state differs from its snapshot")
    return problems
