"""What the library reads off the models (the command's key, the fields it may write) and the
hand-written UPDATE … FROM (VALUES …) statements that save a batch in one round trip.

Its interface, for `accept` and `apply` (apps use the package's names, not these):
`command_key_fk`, `command_extra_fields`, `key_save_fields`, `column_of` (model
introspection, cached per model), `write_decisions` and `write_keys` (one UPDATE per batch).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models

from ..models.ordering import OrderedCommand, OrderedKey


def write_keys(key_model: type[OrderedKey], keys: Sequence[OrderedKey], using: str) -> None:
    """`key.save(update_fields=<all but last_seq>)` for every key, in one UPDATE."""
    connection = connections[using]
    meta = key_model._meta
    pk = meta.pk
    assert pk is not None
    fields: list[models.Field[Any, Any]] = [pk]
    for name in key_save_fields(key_model):
        field = meta.get_field(name)
        assert isinstance(field, models.Field)
        fields.append(field)
    _update_from_values(connection, meta.db_table, fields, keys)


@functools.cache
def command_key_fk(
    command_model: type[OrderedCommand],
) -> tuple[type[OrderedKey], models.ForeignKey]:
    """The command model's one ForeignKey to an `OrderedKey` model, and that model."""
    if not issubclass(command_model, OrderedCommand):
        raise ImproperlyConfigured(f"{command_model!r} is not an OrderedCommand")
    found = [
        field
        for field in command_model._meta.concrete_fields
        if isinstance(field, models.ForeignKey)
        and isinstance(field.related_model, type)
        and issubclass(field.related_model, OrderedKey)
    ]
    if len(found) != 1:
        raise ImproperlyConfigured(
            f"{command_model._meta.label} needs exactly one ForeignKey to an OrderedKey model, "
            f"has {len(found)}"
        )
    fk = found[0]
    related = fk.related_model
    assert isinstance(related, type) and issubclass(related, OrderedKey)
    return related, fk


@functools.cache
def command_extra_fields(
    command_model: type[OrderedCommand], names: tuple[str, ...]
) -> tuple[models.Field[Any, Any], ...]:
    """The command fields named in `names`, checked to be ones an applier may write (not
    the key, the seq or the library's own status fields)."""
    reserved = {"seq", "status", "reason", "applied_at", command_key_fk(command_model)[1].name}
    fields = []
    for name in names:
        field = command_model._meta.get_field(name)
        if (
            not isinstance(field, models.Field)
            or not field.concrete
            or field.primary_key
            or name in reserved
        ):
            raise ImproperlyConfigured(f"{command_model._meta.label}.{name} cannot be written")
        fields.append(field)
    return tuple(fields)


@functools.cache
def key_save_fields(key_model: type[OrderedKey]) -> list[str]:
    """The key fields an applier saves."""
    # Every field but `last_seq`: the callback may change any of them, and `last_seq`
    # belongs to assign_seq (it cannot move while we hold the lock, but must never be
    # written from a stale copy either).
    return [
        field.name
        for field in key_model._meta.concrete_fields
        if not field.primary_key and field.name != "last_seq"
    ]


def column_of(field: models.Field[Any, Any]) -> str:
    """The database column of a concrete field."""
    assert field.column is not None
    return field.column


def _cast_type(field: models.Field[Any, Any], connection: Any) -> str:
    db_type = field.db_type(connection) or "text"
    # An explicit cast to varchar(n) would silently truncate; text keeps the column's
    # length check (assignment raises on an overlong value).
    if re.match(r"^(varchar|character varying|char|character)\b", db_type):
        return "text"
    return db_type


def write_decisions(
    command_model: type[OrderedCommand],
    commands: Sequence[OrderedCommand],
    extra_fields: Sequence[models.Field[Any, Any]],
    applied_at: datetime,
    using: str,
) -> None:
    """Saves the decisions of `commands` (status, reason, `extra_fields`, `applied_at`): one
    UPDATE … FROM (VALUES …) for the whole batch, whatever its size."""
    connection = connections[using]
    meta = command_model._meta
    pk = meta.pk
    assert pk is not None
    status = meta.get_field("status")
    reason = meta.get_field("reason")
    applied_at_field = meta.get_field("applied_at")
    assert isinstance(status, models.Field) and isinstance(reason, models.Field)
    assert isinstance(applied_at_field, models.Field)
    columns: list[models.Field[Any, Any]] = [pk, status, reason, *extra_fields]
    _update_from_values(
        connection,
        meta.db_table,
        columns,
        commands,
        also=(applied_at_field, applied_at_field.get_db_prep_save(applied_at, connection)),
    )


def _update_from_values(
    connection: Any,
    table: str,
    fields: Sequence[models.Field[Any, Any]],
    rows: Sequence[models.Model],
    *,
    also: tuple[models.Field[Any, Any], Any] | None = None,
) -> None:
    """`UPDATE table SET <fields[1:]> FROM (VALUES <each row's fields>) WHERE <fields[0]>
    matches`: every row saved by one statement, whatever their number. `also` sets one more
    column to one value for every row."""
    qn = connection.ops.quote_name
    row_sql = "(" + ", ".join(f"%s::{_cast_type(f, connection)}" for f in fields) + ")"
    names = [qn(column_of(f)) for f in fields]
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    params: list[Any] = []
    if also is not None:
        assignments += f", {qn(column_of(also[0]))} = %s"
        params.append(also[1])
    for row in rows:
        params.extend(f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(table)} AS t SET {assignments} "
            f"FROM (VALUES {', '.join([row_sql] * len(rows))}) AS v({', '.join(names)}) "
            f"WHERE t.{names[0]} = v.{names[0]}",
            params,
        )
