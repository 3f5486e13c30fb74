"""Broadcasts: one message to every subscriber of a topic, fanned out by workers in keyset
batches of subscribers (the outbox chains them), each batch's inbox rows in one statement.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from tasks.context import get_request_id
from tasks.outbox import outbox_enqueue

from .. import kinds as kinds_mod
from ..models import Broadcast, Notification, Topic, TopicSubscription
from ..validation import invalid
from .deliveries import deliveries_insert_sql, push_params, webpush_deliveries_created
from .inbox import notifications_announce
from .states import BROADCAST_MACHINE

__all__ = [
    "BROADCAST_BATCH_SIZE",
    "BROADCAST_FANOUT_TASK",
    "BROADCAST_MACHINE",
    "broadcast_create",
    "broadcast_fanout_batch",
]

# The name of the task in tasks.py: the outbox publishes by name.
BROADCAST_FANOUT_TASK = "notifications.broadcast_fanout"
BROADCAST_QUEUE = "bulk"
# Subscribers per fan-out batch (one transaction, one INSERT ... SELECT): big enough that
# the per-batch cost (a task, a lock, a few statements) is small beside the rows, small
# enough that a batch never holds the broadcast's row lock for long.
BROADCAST_BATCH_SIZE = 1000


_NOTIFICATION_TABLE = Notification._meta.db_table
_SUBSCRIPTION_TABLE = TopicSubscription._meta.db_table


def broadcast_create(
    *, topic_slug: str, title: str, body: str = "", url: str = "", created_by_id: int | None
) -> Broadcast:
    """A broadcast to every subscriber of the topic, fanned out by workers after the
    commit (the first batch's outbox message is written with the row). No such topic is
    a 404; nothing is created."""
    if not title or not title.strip():
        raise invalid("title", "This field may not be blank.")
    topic = Topic.objects.filter(slug=topic_slug).first()
    if topic is None:
        raise SurgeError(ErrorCode.NOT_FOUND, "No such topic.", status=404)
    with transaction.atomic():
        broadcast = Broadcast.objects.create(
            topic=topic,
            title=title[:200],
            body=body,
            url=url[:500],
            created_by_id=created_by_id,
            request_id=get_request_id() or "",
        )
        _enqueue_fanout(broadcast.pk, after_user_id=0)
    return broadcast


def _enqueue_fanout(broadcast_id: int, *, after_user_id: int) -> None:
    # Keyed by where the batch starts: a redelivered batch that re-enqueues its successor
    # writes the same key, so one broadcast never grows two chains.
    outbox_enqueue(
        BROADCAST_FANOUT_TASK,
        args=[broadcast_id],
        key=f"{BROADCAST_FANOUT_TASK}:{broadcast_id}:after:{after_user_id}",
        queue=BROADCAST_QUEUE,
    )


# One keyset batch of the topic's subscribers, their inbox rows in the same statement; the
# partial unique index on (broadcast, user) makes a repeated batch insert nothing. Their Web
# Push deliveries too (as the subscribers' preferences allow).
_FANOUT_SQL = f"""
WITH picked AS (
    SELECT user_id FROM {_SUBSCRIPTION_TABLE}
    WHERE topic_id = %(topic)s AND user_id > %(after)s
    ORDER BY user_id LIMIT %(limit)s
), made AS (
    INSERT INTO {_NOTIFICATION_TABLE}
        (user_id, kind, title, body, url, request_id, source_key, broadcast_id)
    SELECT user_id, %(kind)s, %(title)s, %(body)s, %(url)s, %(request_id)s, '', %(broadcast)s
    FROM picked
    ON CONFLICT (broadcast_id, user_id) WHERE broadcast_id IS NOT NULL DO NOTHING
    RETURNING id, user_id, created_at
), pushes AS ({deliveries_insert_sql(rows="made", broadcast="%(broadcast)s")})
SELECT stats.picked, stats.last_user_id, made.id, made.user_id, made.created_at,
       (SELECT count(*) FROM pushes)
FROM (SELECT count(*) AS picked, max(user_id) AS last_user_id FROM picked) AS stats
LEFT JOIN made ON true
"""


def broadcast_fanout_batch(*, broadcast_id: int, batch_size: int | None = None) -> int:
    """Writes the inbox rows of the broadcast's next batch of subscribers (by user id,
    after `last_user_id`) and their Web Push deliveries, counts both (`recipients`,
    `deliveries`), and enqueues the next batch in the same transaction; after the last one
    the broadcast is fanned out, and `done` once its deliveries have all ended.

    Safe to run twice and concurrently: the broadcast's row lock serialises batches, the
    unique (broadcast, user) index refuses a second row, and the successor's outbox key
    is the batch's end. Returns how many inbox rows it wrote.
    """
    limit = batch_size or BROADCAST_BATCH_SIZE
    with transaction.atomic():
        broadcast = Broadcast.objects.select_for_update().filter(pk=broadcast_id).first()
        if broadcast is None or broadcast.fanned_out_at is not None:
            return 0  # gone, or its last batch ran already (a redelivered message)
        with connection.cursor() as cursor:
            cursor.execute(
                _FANOUT_SQL,
                {
                    "topic": broadcast.topic_id,
                    "after": broadcast.last_user_id,
                    "limit": limit,
                    "kind": kinds_mod.BROADCAST,
                    "title": broadcast.title,
                    "body": broadcast.body,
                    "url": broadcast.url,
                    "request_id": broadcast.request_id,
                    "broadcast": broadcast.pk,
                    "critical": kinds_mod.is_critical(kinds_mod.BROADCAST),
                    **push_params(),
                },
            )
            rows = cursor.fetchall()
        picked, last_user_id, created = rows[0][0], rows[0][1], int(rows[0][5])
        made = [
            Notification(
                id=row[2],
                user_id=row[3],
                created_at=row[4],
                kind=kinds_mod.BROADCAST,
                title=broadcast.title,
                body=broadcast.body,
                url=broadcast.url,
                request_id=broadcast.request_id,
                broadcast_id=broadcast.pk,
            )
            for row in rows
            if row[2] is not None
        ]
        webpush_deliveries_created(count=created)
        fields: dict[str, Any] = {
            "recipients": broadcast.recipients + len(made),
            "deliveries": broadcast.deliveries + created,
        }
        if last_user_id is not None:
            fields["last_user_id"] = last_user_id
        if picked < limit:
            # The inbox is written. `done` waits for the pushes: the delivery pass that
            # ends the last of them moves it (under this same row lock, so one of the two
            # sees the other's counts). None to wait for: done now.
            now = timezone.now()
            fields["fanned_out_at"] = now
            ended = broadcast.delivered + broadcast.failed + broadcast.gone
            if ended >= fields["deliveries"]:
                fields["finished_at"] = now
                BROADCAST_MACHINE.move(broadcast, Broadcast.Status.DONE, fields=fields)
            else:
                _save_progress(broadcast, fields)
        else:
            _save_progress(broadcast, fields)
            _enqueue_fanout(broadcast.pk, after_user_id=int(last_user_id))
        notifications_announce(made)
    return len(made)


def _save_progress(broadcast: Broadcast, fields: dict[str, Any]) -> None:
    if broadcast.status == Broadcast.Status.QUEUED:
        BROADCAST_MACHINE.move(broadcast, Broadcast.Status.SENDING, fields=fields)
        return
    for name, value in fields.items():
        setattr(broadcast, name, value)
    broadcast.save(update_fields=list(fields))
