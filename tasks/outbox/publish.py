"""Publishing rows to the broker (pipelined, one round trip per batch), stamping them sent,
and turning a row that can never be published into a dead letter."""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
from django.db import connection
from django.db.models.functions import Now

from config.celery import app as celery_app

from ..context import HEADER as REQUEST_ID_HEADER
from ..failures import TaskFailure, record_failure
from ..models import OutboxMessage
from ..tracing import record

logger = logging.getLogger(__name__)

TASK_ID_PREFIX = "outbox-"
# Messages sent to Redis in one pipeline (one round trip) at most.
_PIPELINE_MAX = 500


_MARK_SENT = (
    f"UPDATE {OutboxMessage._meta.db_table} "
    "SET sent_at = STATEMENT_TIMESTAMP(), broker_epoch = %s, publish_count = publish_count + 1 "
    "WHERE id = ANY(%s)"
)


def mark_sent(rows: list[OutboxMessage], epoch: int, *, only_unsent: bool) -> None:
    """Stamps `rows` sent into `epoch` (SQL by hand: this is on every relay's path)."""
    sql = _MARK_SENT + " AND sent_at IS NULL" if only_unsent else _MARK_SENT
    with connection.cursor() as cursor:
        cursor.execute(sql, [epoch, [row.pk for row in rows]])


# Errors of one row (not of the broker): publishing it again cannot help.
_UNPUBLISHABLE = (KeyError, TypeError, ValueError, kombu.exceptions.EncodeError)


def publish_rows(producer: Any, rows: list[OutboxMessage], *, attempts: int) -> list[OutboxMessage]:
    """Publishes `rows` over `producer`'s connection; returns those published. A row that
    cannot be published at all (unknown queue, args not a list) becomes a dead letter and
    is marked done, so no sweep trips over it again. A broker error propagates after
    `attempts` tries of the whole batch (a try may have delivered some messages: the
    next one publishes them twice, which consumers ignore)."""
    unpublishable: dict[int, tuple[OutboxMessage, Exception]] = {}
    for attempt in range(1, attempts + 1):
        try:
            published = _publish_pipelined(producer, rows, unpublishable)
            break
        except Exception:
            if attempt == attempts:
                raise
            logger.info("outbox: publishing %d rows failed, trying again", len(rows))
    for row, exc in unpublishable.values():
        _dead_letter_unpublishable(row, exc)
    for row in published:
        record(
            "outbox.published",
            row.task_name,
            request_id=row.request_id or None,
            detail={"outbox_id": row.pk, "publish_count": row.publish_count + 1},
        )
    return published


def _publish_pipelined(
    producer: Any,
    rows: list[OutboxMessage],
    unpublishable: dict[int, tuple[OutboxMessage, Exception]],
) -> list[OutboxMessage]:
    """One try: Celery builds each message as usual; kombu's publish batch sends them to
    Redis in pipelines of up to `_PIPELINE_MAX` (one round trip each) instead of one
    client and one round trip per message. Returns only after the last pipeline ran:
    a row counts as published when Redis has answered for it. A pipeline that fails
    raises (kombu's BatchPublishError: which of its messages arrived is unknown)."""
    published: list[OutboxMessage] = []
    with producer.batch(max_size=_PIPELINE_MAX):
        for row in rows:
            if row.pk in unpublishable:
                continue
            message_id = row.logical_message_id
            headers: dict[str, Any] = {"outbox_id": row.pk, "message_id": message_id}
            if row.request_id:
                headers[REQUEST_ID_HEADER] = row.request_id
            try:
                celery_app.send_task(
                    row.task_name,
                    args=row.args,
                    kwargs=row.kwargs,
                    task_id=f"{TASK_ID_PREFIX}{row.pk}",
                    queue=row.queue or None,
                    headers=headers,
                    producer=producer,
                    # Only a queue's declaration (once per connection) goes over the
                    # network here; the messages go at the batch's flush. A broker error
                    # from either fails this try, and `publish_rows` tries the whole batch again.
                    retry=False,
                    add_to_parent=False,
                )
            except _UNPUBLISHABLE as exc:
                unpublishable[row.pk] = (row, exc)
                continue
            published.append(row)
    return published


def _dead_letter_unpublishable(row: OutboxMessage, exc: Exception) -> None:
    logger.error("outbox row %s (%s) cannot be published: %r", row.pk, row.task_name, exc)
    record_failure(
        TaskFailure(
            task_name=row.task_name,
            task_id=f"{TASK_ID_PREFIX}{row.pk}",
            message_id=row.logical_message_id,
            args=row.args if isinstance(row.args, list) else [row.args],
            kwargs=row.kwargs if isinstance(row.kwargs, dict) else {"value": row.kwargs},
            queue=row.queue,
            reason="unpublishable",
            exception_class=type(exc).__name__,
            exception_message=str(exc),
            traceback="",
            request_id=row.request_id,
            attempts=0,
            first_failed_at=None,
        )
    )
    OutboxMessage.objects.filter(pk=row.pk).update(done_at=Now())
