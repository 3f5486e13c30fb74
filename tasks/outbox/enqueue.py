"""Enqueueing: the outbox row, written in the caller's transaction, relayed after its commit."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from config.celery import app as celery_app

from ..context import get_request_id
from ..models import OutboxMessage
from ..tracing import record
from .relay import relay_rows, transaction_batch

_INSERT = (
    f"INSERT INTO {OutboxMessage._meta.db_table} "
    "(task_name, args, kwargs, queue, key, message_id, request_id, created_at, "
    "broker_epoch, publish_count) "
    # clock_timestamp(), not now(): the age the sweeper compares counts from this statement,
    # not from the start of a transaction that may have run a while before it.
    "VALUES (%s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, clock_timestamp(), 0, 0)"
)


def outbox_enqueue(
    task_name: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    key: str | None = None,
    queue: str | None = None,
) -> OutboxMessage:
    """Has `task_name(*args, **kwargs)` run after the caller's transaction commits, at
    least once, and not at all if it rolls back.

    With `key`, enqueueing a key that exists already changes nothing and returns the
    existing row. Arguments must be JSON (ids and primitives): a TypeError here is the
    caller's bug, raised inside its transaction. The row carries the current request id.
    """
    return enqueue_message(
        task_name,
        args=args,
        kwargs=kwargs,
        key=key,
        queue=queue,
        message_id="",
        request_id=get_request_id() or "",
    )


def enqueue_message(
    task_name: str,
    *,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    key: str | None,
    queue: str | None,
    message_id: str,
    request_id: str,
) -> OutboxMessage:
    """`outbox_enqueue` with the logical message id and the request id given (a replayed
    dead letter carries those of the message it replays)."""
    if queue and queue not in celery_app.amqp.queues:
        raise ValueError(f"unknown queue {queue!r}")
    args_list = list(args or [])
    kwargs_dict = dict(kwargs or {})
    sql = _INSERT
    if key is not None:
        sql += " ON CONFLICT (key) DO NOTHING"
    with connection.cursor() as cursor:
        cursor.execute(
            sql + " RETURNING id, created_at",
            [
                task_name,
                json.dumps(args_list),
                json.dumps(kwargs_dict),
                queue or "",
                key,
                message_id,
                request_id,
            ],
        )
        inserted = cursor.fetchone()
    if inserted is None:
        # The key exists: that row (committed, or written earlier in this transaction)
        # is published by whoever wrote it.
        return OutboxMessage.objects.get(key=key)
    row = OutboxMessage(
        id=inserted[0],
        task_name=task_name,
        args=args_list,
        kwargs=kwargs_dict,
        queue=queue or "",
        key=key,
        message_id=message_id,
        request_id=request_id,
        created_at=inserted[1],
    )
    row._state.adding = False
    row._state.db = connection.alias
    record(
        "outbox.enqueued",
        task_name,
        request_id=request_id or None,
        detail={"outbox_id": row.pk, "key": key},
    )
    if connection.in_atomic_block:
        transaction_batch().rows.append(row)
    else:
        relay_rows([row])  # autocommit: the row is committed already
    return row
