"""Idempotent consumers: "message M processed" recorded in the same transaction as M's effect.

Every task is delivered at least once (acks_late, redelivery after a lost worker, the outbox
republishing what may have been lost), so a task with an effect that a natural key cannot
guard does this:

    @shared_task(name="x.apply", base=SurgeTask, bind=True)
    def apply(self, item_id: int) -> None:
        with transaction.atomic():
            if not consume_once(consumer="x.apply", message_id=current_message_id(self)):
                return  # a redelivery: the effect is already there
            ...  # the effect

The effect and the record commit together or not at all. Two deliveries at the same time:
the second INSERT waits on the unique index until the first commits, then sees the conflict
and returns False; if the first rolls back, the second goes ahead.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from .models import ProcessedMessage

__all__ = ["consume_once", "current_message_id", "message_id_of"]

_INSERT = (
    f"INSERT INTO {ProcessedMessage._meta.db_table} (consumer, message_id, processed_at) "
    "VALUES (%s, %s, now()) ON CONFLICT (consumer, message_id) DO NOTHING RETURNING id"
)


def consume_once(*, consumer: str, message_id: str) -> bool:
    """Marks `message_id` processed by `consumer`; True the first time, False ever after.

    Must run inside `transaction.atomic()` with the effect: the record is only as good as
    the transaction that commits it with the effect.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("consume_once() must run inside transaction.atomic() with the effect")
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, [consumer, message_id])
        return cursor.fetchone() is not None


def message_id_of(request: Any) -> str:
    """The logical id of the message behind a task request (see `current_message_id`)."""
    message_id = getattr(request, "message_id", None)
    if message_id:
        return str(message_id)
    outbox_id = getattr(request, "outbox_id", None)
    if outbox_id:
        return f"outbox-{outbox_id}"
    return str(request.id)


def current_message_id(task: Any) -> str:
    """The logical id of the message the task is running for: the same for every delivery,
    retry and republication of one message (and for the replay of its dead letter).

    From the outbox: "outbox-<row id>" (or the id a replay carries along). Otherwise the
    Celery task id, which a redelivery and a retry keep too.
    """
    return message_id_of(task.request)
