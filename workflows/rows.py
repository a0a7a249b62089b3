"""Rows written as SQL the edges of a run compose themselves (one statement for a start's
rows; an INSERT … ON CONFLICT for a decision), from model instances built in memory: the
values are what the ORM would write (defaults, `pre_save`, each field's adaptation), only
the query compiler — most of the ORM's CPU on a write — is not paid. PostgreSQL only:
callers keep the ORM for embedded mode's SQLite."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.models import Model
from django.db.models.base import ModelState
from django.db.models.expressions import DatabaseDefault
from django.db.models.signals import post_init, pre_init


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
    attrs = obj.__dict__
    for f, placeholder, plain in _written(type(obj), db.vendor):
        if f.attname in skip:
            continue
        placeholders.append(placeholder)
        if plain is not None:
            value = attrs.get(f.attname, _UNREAD)
            if as_is(value, plain):
                # What pre_save and get_db_prep_save return for it, unchanged (`plain_type`).
                params.append(value)
                continue
        value = f.pre_save(obj, True)
        if isinstance(value, DatabaseDefault):
            # A field with a database default only: written by the ORM, not here.
            raise TypeError(f"{f.model.__name__}.{f.name} has no value to write")
        params.append(f.get_db_prep_save(value, db))
    return "(" + ", ".join(placeholders) + ")", params


_UNREAD = object()  # a deferred column: not in the instance's dict


@functools.cache
def unnest(model: type[Model]) -> str:
    """`SELECT * FROM UNNEST(%s::type[], …)`: rows of `model` for a multi-row INSERT into
    `columns(model)`, one array parameter per column (`by_column`), so the statement's text
    is the same for any number of rows."""
    arrays = ", ".join(f"{placeholder}[]" for _, placeholder, _ in _written(model, "postgresql"))
    return f"SELECT * FROM UNNEST({arrays})"  # noqa: S608 - the model's own types


def by_column(model: type[Model], objs: Sequence[Model]) -> list[list[Any]]:
    """`values` of the `model` instances `objs`, one list per column (for `unnest`)."""
    if not objs:
        return [[] for _ in columns(model)]
    return [list(column) for column in zip(*(values(obj)[1] for obj in objs), strict=True)]


def as_is(value: Any, plain: type) -> bool:
    """Whether `value` is written as it is to a field of `plain_type` `plain` (not None)."""
    if value is None:
        return True
    if type(value) is not plain:
        return False
    return plain is not datetime or cast(datetime, value).tzinfo is not None


@functools.cache
def _written(model: type[Model], vendor: str) -> list[tuple[Any, str, type | None]]:
    """The fields an INSERT writes, each one's typed placeholder and `plain_type`: worked
    out once per model (a field's database type took a fifth of a start's CPU, asked for
    every row)."""
    return [
        (f, f"%s::{f.cast_db_type(connection)}", plain_type(f, vendor))
        for f in _fields(model)
        if not _auto(f)
    ]


def plain_type(field: Any, vendor: str) -> type | None:
    """The type of value the field writes as it is: for a value of exactly that type (or
    None), Django's pre_save is the attribute itself and get_db_prep_save returns it
    unchanged — a char or text field's str, a boolean's bool, on PostgreSQL a UUID field's
    (or a foreign key to one) uuid.UUID and a datetime field's aware datetime (a naive one
    goes through the field, which warns and makes it aware; a field with auto_now or
    auto_now_add sets its own value in pre_save). Only for these exact field classes: a
    subclass may prepare its value otherwise. None: always through the field's own
    methods."""
    kind = type(field)
    if kind is models.ForeignKey:
        kind = type(field.target_field)
        if kind is not models.UUIDField:
            return None
    if kind in (models.CharField, models.TextField):
        return str
    if kind is models.BooleanField:
        return bool
    if kind is models.UUIDField and vendor == "postgresql":
        return uuid.UUID
    if (
        kind is models.DateTimeField
        and vendor == "postgresql"
        and not (field.auto_now or field.auto_now_add)
    ):
        return datetime
    return None


def new[M: Model](model: type[M], **kwargs: Any) -> M:
    """`model(**kwargs)`, the unsaved instance the engine writes a row from, built without
    Model.__init__'s per-field work (its checks and descriptors cost more than the row's
    INSERT on the engine's hot path: a trace event, a snapshot, an action, an effect, a
    decision). Keyword arguments name fields by name or attname; a relation given as an
    instance sets its id and is cached, as the ORM's descriptor does; every other field gets
    its default. Through Model.__init__ while a pre_init/post_init receiver listens for the
    model, so signals behave as ever."""
    if init_listened(model):
        return model(**kwargs)
    obj = model.__new__(model)
    obj._state = ModelState()
    attrs = obj.__dict__
    for f, relation, default in _init_fields(model):
        if f.attname in kwargs:
            attrs[f.attname] = kwargs.pop(f.attname)
        elif relation and f.name in kwargs:
            setattr(obj, f.name, kwargs.pop(f.name))  # id and cache, as the ORM sets them
        else:
            attrs[f.attname] = default()
    if kwargs:
        raise TypeError(f"{model.__name__}() got unexpected keyword arguments: {sorted(kwargs)}")
    return obj


def init_listened(model: type[Model]) -> bool:
    """Whether a pre_init/post_init receiver listens for `model`: then an instance must be
    built through Model.__init__ (here, and where hotsql builds one from a row read). With
    no receiver connected at all (this app's case: an ImageField would connect one) the
    answer is read off the signals' receiver lists, not looked up per model and sender."""
    if not pre_init.receivers and not post_init.receivers:
        return False
    return pre_init.has_listeners(model) or post_init.has_listeners(model)


@functools.cache
def _init_fields(model: type[Model]) -> tuple[tuple[Any, bool, Callable[[], Any]], ...]:
    """Each concrete field, whether it is a relation, and what makes its default: the
    field's own maker (what Field.get_default calls), a relation's get_default itself."""
    return tuple(
        (f, f.is_relation, f.get_default if f.is_relation else f._get_default)  # type: ignore[attr-defined]
        for f in model._meta.concrete_fields
    )


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
