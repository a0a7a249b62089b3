"""Prepared SQL for the engine's hot path (PostgreSQL only; the ORM everywhere else).

The same few statements run for every step of every run; through the ORM each one is
compiled again in Python (Django's SQL compiler was ~25-30% of a worker's samples). Here
they are fixed SQL, sent with server-side binding and prepared once per connection by
psycopg (`prepare=True`), so the client neither compiles nor quotes and the server neither
parses nor plans them again. That needs the connection's `prepare_threshold` set
(config.settings.services): Django leaves it None, and psycopg then prepares nothing, not
even with `prepare=True` (tests/workflows/test_query_counts.py checks it is).

They go through Django's cursor wrapper all the same: its error translation, its
`execute_wrapper`s (the query counters of the tests and the benchmark) and, under
CaptureQueriesContext, its query log see them like any other statement.
"""

from __future__ import annotations

import enum
import functools
import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Model
from django.db.models.base import ModelState

from .rows import as_is, init_listened, plain_type

try:  # psycopg 3: the only driver the PostgreSQL setups use.
    import psycopg
    from psycopg.pq import ExecStatus
    from psycopg.types.json import Jsonb

    _TUPLES = ExecStatus.TUPLES_OK
except ImportError:  # pragma: no cover - SQLite-only installs
    psycopg = None  # type: ignore[assignment]


def enabled() -> bool:
    """Prepared statements here: PostgreSQL through psycopg 3. Elsewhere (embedded mode's
    SQLite), the callers keep their ORM path."""
    return psycopg is not None and connection.vendor == "postgresql"


if psycopg is not None:

    class _PreparedCursor(psycopg.RawCursor):
        """Server-side binding; every statement prepared (psycopg keeps a per-connection
        cache of them, so the second execution of a statement skips parse and plan).
        Statements come with PostgreSQL's own placeholders (`_native`)."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs["prepare"] = True
            return super().execute(query, params, **kwargs)


class _SqlAsSent(CursorDebugWrapper):
    """Django's debug wrapper (the query log of tests and DEBUG), logging the statement as
    sent: what psycopg records of a prepared one (`last_executed_query`) is not its SQL."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        with self.debug_sql(sql, params):
            return self._execute_with_wrappers(sql, params, many=False, executor=self._execute)


def rows(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one prepared statement in the current transaction; its rows (none for a statement
    without RETURNING)."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each `connection.x` looks it up again
    # What `connection.cursor()` does first: a health check where configured, then connect.
    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        raw = _PreparedCursor(db.connection)
    # Django's wrappers take any DB-API cursor (typed as their own).
    cursor: CursorWrapper
    if db.queries_logged:  # noqa: SIM108 - a ternary would hide which branch the ignore is for
        cursor = _SqlAsSent(raw, db)
    else:
        cursor = db.make_cursor(raw)  # type: ignore[arg-type]
    # A list goes as an array literal built here where its elements allow (`_arrays`).
    params = [_array(p) if type(p) is list else p for p in params]
    with cursor:
        cursor.execute(_native(sql), params)
        # Not `description` (it builds a Column per column, every time): the result's status.
        result = raw.pgresult
        return cursor.fetchall() if result is not None and result.status == _TUPLES else []


# --- arrays ---------------------------------------------------------------------------------
#
# The engine's batched statements pass columns as arrays (UNNEST of a round's rows, ANY of a
# batch's ids): ~20 arrays of up to a hundred elements per round. psycopg dumps a list element
# by element in Python (a dumper looked up, a regex searched and a token appended for each):
# 0.27 ms per approval run, 4% of the engine's CPU. A list whose elements are all of one of
# the types below (or None) is sent instead as PostgreSQL's array literal, built with one
# join, under the array type psycopg itself would have sent it as; any other list is left to
# psycopg.


class _Array:
    """An array parameter, as its text literal."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _quoted(value: str) -> str:
    # Inside double quotes only `"` and `\` are special (PostgreSQL's array input).
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _jsonb_text(value: Any) -> str:
    return _quoted((value.dumps or json.dumps)(value.obj))


# An element type -> its array parameter's class and an element's text in the literal.
# Filled by _register_arrays (psycopg installed).
_ARRAYS: dict[type, tuple[type[_Array], Callable[[Any], str]]] = {}
_NONE = type(None)
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1


def _array(values: list[Any]) -> Any:
    """`values` as an array literal of its element type, or as it is (psycopg's own dumping)."""
    # A str subclass (a TextChoices member) is sent as its str, as psycopg does.
    kinds = {str if issubclass(k, str) else k for k in {type(v) for v in values}}
    kinds.discard(_NONE)
    if len(kinds) != 1:
        return values  # empty, all NULL or mixed: psycopg decides
    (kind,) = kinds
    found = _ARRAYS.get(kind)
    if found is None:
        return values
    if kind is datetime and any(v is not None and v.tzinfo is None for v in values):
        return values  # a naive datetime is a timestamp, not a timestamptz
    if kind is int and any(v is not None and not _INT8_MIN <= v <= _INT8_MAX for v in values):
        return values  # past int8: numeric
    array, text = found
    return array("{" + ",".join("NULL" if v is None else text(v) for v in values) + "}")


def _register_arrays() -> None:
    from psycopg.adapt import Dumper
    from psycopg.postgres import types as pg_types

    def dumper(oid: int) -> type[Dumper]:
        class ArrayDumper(Dumper):
            def dump(self, obj: _Array) -> bytes:
                return obj.text.encode()

        ArrayDumper.oid = oid
        return ArrayDumper

    # The array type psycopg sends each as (an int list: int8[], as for any int over 32 bits);
    # a uuid's or an int's text has no character an array literal treats specially.
    elements: tuple[tuple[type, str, Callable[[Any], str]], ...] = (
        (uuid.UUID, "uuid", str),
        (int, "int8", str),
        (str, "text", _quoted),
        (datetime, "timestamptz", lambda v: _quoted(v.isoformat())),
        (Jsonb, "jsonb", _jsonb_text),
    )
    for kind, name, text in elements:
        info = pg_types.get(name)
        assert info is not None
        array = type(f"_{name.capitalize()}Array", (_Array,), {"__slots__": ()})
        psycopg.adapters.register_dumper(array, dumper(info.array_oid))
        _ARRAYS[kind] = (array, text)


if psycopg is not None:
    _register_arrays()


_NATIVE: dict[str, str] = {}
_NATIVE_MAX = 512  # texts kept; the engine's hot path has a few dozen
_PLACEHOLDER = re.compile(r"%(.)", re.DOTALL)


def _native(sql: str) -> str:
    """`sql` with PostgreSQL's placeholders (`$1`, `$2`, …) for `%s`, converted once per
    text: psycopg converts every execution's, and does not even cache the conversion of a
    statement of more than 50 parameters (a run's start has over a hundred)."""
    found = _NATIVE.get(sql)
    if found is None:
        number = 0

        def placeholder(m: re.Match[str]) -> str:
            nonlocal number
            if m[1] == "%":
                return "%"
            if m[1] != "s":
                raise ValueError(f"only %s placeholders in prepared SQL, not %{m[1]}")
            number += 1
            return f"${number}"

        found = _PLACEHOLDER.sub(placeholder, sql)
        if len(_NATIVE) >= _NATIVE_MAX:
            _NATIVE.clear()
        _NATIVE[sql] = found
    return found


def jsonb(value: Any) -> Any:
    """A JSON value as a parameter (server-side binding does not guess a dict's type)."""
    return None if value is None else Jsonb(value)


def loads(value: Any) -> Any:
    """A jsonb column as Django's adapters return it (text) -> the Python value. Through
    orjson: the engine decodes ~50 jsonb values per approval run (a run's input, plan and
    state, its steps', its snapshots' and actions' columns), and json.loads took 2.7 times
    as long. orjson reads an integer past 64 bits as a float, and refuses a few texts json
    reads (1e400, a lone surrogate): a text with a run of 19 digits or more, and one orjson
    refuses, goes to json, so the value is json's in every case."""
    if type(value) is not str:
        return json.loads(value) if isinstance(value, str | bytes) else value
    if _LONG_DIGITS.search(value) is None:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    return json.loads(value)


_LONG_DIGITS = re.compile(r"[0-9]{19}")


def assignments(instance: Model, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """`col = %s, …` and its parameters for `values` (field name -> value) of `instance`'s
    model, each value prepared as the ORM would save it."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each `connection.x` looks it up again
    model = type(instance)
    parts, params = [], []
    for name, value in values.items():
        f, assignment, plain = _assigned(model, name, db.vendor)
        parts.append(assignment)
        if plain is not None and as_is(value, plain):
            params.append(value)  # what the field's get_db_prep_save returns for it
            continue
        prepped = f.get_db_prep_save(value, db)
        params.append(prepped.value if isinstance(prepped, enum.Enum) else prepped)
    return ", ".join(parts), params


@functools.cache
def _assigned(model: type[Model], name: str, vendor: str) -> tuple[Any, str, type | None]:
    f = model._meta.get_field(name)
    return f, f"{f.column} = %s", plain_type(f, vendor)  # type: ignore[union-attr]


def save(
    instance: Model, fields: Sequence[str], *, also: Sequence[tuple[str, Sequence[Any]]] = ()
) -> None:
    """`instance.save(update_fields=fields)` as one prepared UPDATE by primary key; `also`:
    more data-modifying statements (idempotent) sent in the same round trip, as CTEs."""
    sets, params = assignments(instance, {f: getattr(instance, f) for f in fields})
    sql = f"UPDATE {type(instance)._meta.db_table} SET {sets} WHERE id = %s"  # noqa: S608
    rows(with_also(sql, also), [*also_params(also), *params, instance.pk])


def with_also(sql: str, also: Sequence[tuple[str, Sequence[Any]]]) -> str:
    if not also:
        return sql
    return "WITH " + ", ".join(f"also{i} AS ({s})" for i, (s, _) in enumerate(also)) + " " + sql


def also_params(also: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
    return [p for _, params in also for p in params]


class Columns:
    """A model's columns as a prepared SELECT reads them (`alias.col, …`), and the rows
    turned back into model instances — what the ORM's compiler and iterator do, minus the
    compiling: jsonb columns decoded (Django's adapters leave them text), the rest as
    psycopg loads them (Django's adapters set the time zone)."""

    def __init__(self, model: type[Model], alias: str, *, exclude: Sequence[str] = ()) -> None:
        self.model = model
        fields = [f for f in model._meta.concrete_fields if f.attname not in exclude]
        self.attnames = [f.attname for f in fields]
        self.json = [i for i, f in enumerate(fields) if f.get_internal_type() == "JSONField"]
        self.sql = ", ".join(f"{alias}.{f.column}" for f in fields)
        self.width = len(fields)

    def build(self, row: Sequence[Any], start: int = 0) -> Any:
        values = list(row[start : start + self.width])
        for i in self.json:
            values[i] = loads(values[i])
        model = self.model
        if init_listened(model):
            return model.from_db(DEFAULT_DB_ALIAS, self.attnames, values)
        # What from_db's Model.__init__ leaves, without its per-field setattr and signals
        # (nothing listens): the columns in the instance's dict, a column not read left
        # deferred (loaded on first use, as from_db leaves it), and a state that says the
        # row came from the database.
        instance = model.__new__(model)
        instance.__dict__.update(zip(self.attnames, values, strict=True))
        state = instance._state = ModelState()
        state.adding = False
        state.db = DEFAULT_DB_ALIAS
        return instance


_INSERT_TRACES = """INSERT INTO workflows_traceevent
    (run_id, step_name, kind, message, data, actor, created_at)
    SELECT * FROM UNNEST(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::jsonb[],
        %s::text[], %s::timestamptz[])
    RETURNING id"""


def insert_traces(events: Sequence[Any]) -> None:
    """`TraceEvent.objects.bulk_create(events)` as one prepared multi-row INSERT (every round
    of the engine writes some, and every lone event): each event gets its pk."""
    if not enabled():
        type(events[0]).objects.bulk_create(events)
        return
    found = rows(
        _INSERT_TRACES,
        [
            [e.run_id for e in events],
            [e.step_name for e in events],
            [str(e.kind) for e in events],
            [e.message for e in events],
            [Jsonb(e.data) for e in events],
            [e.actor for e in events],
            [e.created_at for e in events],
        ],
    )
    for event, (pk,) in zip(events, found, strict=True):
        event.pk = pk
        event._state.adding = False
        event._state.db = connection.alias
