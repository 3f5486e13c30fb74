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
from tasks.statemachine import StateMachine

from .. import kinds as kinds_mod
from ..models import Broadcast, Notification, Topic, TopicSubscription
from ..validation import invalid
from .deliveries import webpush_deliveries_create
from .inbox import notifications_announce

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

BROADCAST_MACHINE = StateMachine(
    "broadcast",
    {
        Broadcast.Status.QUEUED: {Broadcast.Status.SENDING, Broadcast.Status.DONE},
        Broadcast.Status.SENDING: {Broadcast.Status.DONE},
    },
)

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
# partial unique index on (broadcast, user) makes a repeated batch insert nothing.
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
)
SELECT stats.picked, stats.last_user_id, made.id, made.user_id, made.created_at
FROM (SELECT count(*) AS picked, max(user_id) AS last_user_id FROM picked) AS stats
LEFT JOIN made ON true
"""


def broadcast_fanout_batch(*, broadcast_id: int, batch_size: int | None = None) -> int:
    """Writes the inbox rows of the broadcast's next batch of subscribers (by user id,
    after `last_user_id`), counts them in `recipients`, and enqueues the next batch in the
    same transaction, or moves the broadcast to `done` after the last one.

    Safe to run twice and concurrently: the broadcast's row lock serialises batches, the
    unique (broadcast, user) index refuses a second row, and the successor's outbox key
    is the batch's end. Returns how many inbox rows it wrote.
    """
    limit = batch_size or BROADCAST_BATCH_SIZE
    with transaction.atomic():
        broadcast = Broadcast.objects.select_for_update().filter(pk=broadcast_id).first()
        if broadcast is None or broadcast.status == Broadcast.Status.DONE:
            return 0
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
                },
            )
            rows = cursor.fetchall()
        picked, last_user_id = rows[0][0], rows[0][1]
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
        fields: dict[str, Any] = {"recipients": broadcast.recipients + len(made)}
        if last_user_id is not None:
            fields["last_user_id"] = last_user_id
        if picked < limit:
            fields["finished_at"] = timezone.now()
            BROADCAST_MACHINE.move(broadcast, Broadcast.Status.DONE, fields=fields)
        else:
            if broadcast.status == Broadcast.Status.QUEUED:
                BROADCAST_MACHINE.move(broadcast, Broadcast.Status.SENDING, fields=fields)
            else:
                for name, value in fields.items():
                    setattr(broadcast, name, value)
                broadcast.save(update_fields=list(fields))
            _enqueue_fanout(broadcast.pk, after_user_id=int(last_user_id))
        notifications_announce(made)
        webpush_deliveries_create(kind=kinds_mod.BROADCAST, notification_ids=[n.pk for n in made])
    return len(made)
