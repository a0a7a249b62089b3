"""Rows written as SQL the edges of a run compose themselves (one statement for a start's
rows; an INSERT … ON CONFLICT for a decision), from model instances built in memory: the
values are what the ORM would write (defaults, `pre_save`, each field's adaptation), only
the query compiler — most of the ORM's CPU on a write — is not paid. PostgreSQL only:
callers keep the ORM for embedded mode's SQLite."""

from __future__ import annotations

import functools
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model
from django.db.models.expressions import DatabaseDefault


@functools.cache
def columns(model: type[Model], *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The quoted columns an INSERT of `model` writes: every concrete field but an
    auto-incremented primary key and those named in `skip` (attnames). Worked out once."""
    return tuple(
        connection.ops.quote_name(f.column)
        for f in _fields(model)
        if not _auto(f) and f.attname not in skip
    )


def values(obj: Model, *, skip: tuple[str, ...] = ()) -> tuple[str, list[Any]]:
    """`(%s::type, …)` and its parameters for `obj`, in `columns` order: typed, so the row
    reads the same in a VALUES list, a SELECT list or under INSERT."""
    placeholders, params = [], []
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of `connection` looks it up again
    for f, placeholder in _written(type(obj), db.vendor):
        if f.attname in skip:
            continue
        value = f.pre_save(obj, True)
        if isinstance(value, DatabaseDefault):
            # A field with a database default only: written by the ORM, not here.
            raise TypeError(f"{f.model.__name__}.{f.name} has no value to write")
        placeholders.append(placeholder)
        params.append(f.get_db_prep_save(value, db))
    return "(" + ", ".join(placeholders) + ")", params


@functools.cache
def _written(model: type[Model], vendor: str) -> list[tuple[Any, str]]:
    """The fields an INSERT writes and each one's typed placeholder: worked out once per
    model (a field's database type took a fifth of a start's CPU, asked for every row)."""
    return [(f, f"%s::{f.cast_db_type(connection)}") for f in _fields(model) if not _auto(f)]


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def saved[M: Model](obj: M) -> M:
    """Mark an instance written outside the ORM as loaded from the database."""
    obj._state.adding = False
    obj._state.db = "default"
    return obj


def _fields(model: type[Model]) -> list[Any]:
    return list(model._meta.concrete_fields)


def _auto(field: Any) -> bool:
    return bool(field.primary_key and field.get_internal_type().endswith("AutoField"))
