"""Accepting a command: its seq, taken in the accepting transaction, and its row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections, router, transaction

from ..models.ordering import OrderedKey
from ..outbox import outbox_enqueue
from .outcome import C, OrderingError
from .store import column_of, command_key_fk


def assign_seq(*, key_model: type[OrderedKey], key_id: int) -> int:
    """The next seq of `key_id`, taken in the caller's transaction.

    Invariants: seqs of one key are 1, 2, 3 … with no gap and no repeat, because the
    increment is part of the accepting transaction (a rollback gives the number back) and
    the row lock it takes serialises accepts of that key until the transaction ends. Other
    keys are not locked. Raises `OrderingError` outside a transaction (an autocommitted
    increment whose command insert then fails would leave a gap for ever), and
    `key_model.DoesNotExist` for an unknown key.
    """
    using = router.db_for_write(key_model)
    connection = connections[using]
    if not connection.in_atomic_block:
        raise OrderingError(
            "assign_seq must run inside transaction.atomic(), in the transaction that "
            "stores the command"
        )
    qn = connection.ops.quote_name
    meta = key_model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET {qn('last_seq')} = {qn('last_seq')} + 1 "
            f"WHERE {qn(column_of(meta.pk))} = %s RETURNING {qn('last_seq')}",
            [key_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise key_model.DoesNotExist(f"{meta.label} {key_id} does not exist")
    return int(row[0])


def accept_command(
    *,
    command_model: type[C],
    key_id: int,
    apply_task: str | None,
    fields: Mapping[str, Any] | None = None,
    queue: str | None = None,
) -> C:
    """Store one command for `key_id` with the next seq, and have `apply_task` run after commit.

    Joins the caller's transaction if there is one (no savepoint), else opens its own: the
    seq, the command row and the outbox entry commit or vanish together, so an accepted
    command always has a seq and an applier on its way. `apply_task=None` leaves the
    enqueueing to the caller.
    """
    key_model, fk = command_key_fk(command_model)
    using = router.db_for_write(command_model)
    with transaction.atomic(using=using, savepoint=False):
        seq = assign_seq(key_model=key_model, key_id=key_id)
        command = command_model(**{fk.attname: key_id, "seq": seq, **(fields or {})})
        command.save(using=using, force_insert=True)
        if apply_task:
            outbox_enqueue(apply_task, args=[key_id], queue=queue)
    return command
