"""Every write of the notifications app: notify, read, preferences, topics, Web Push
subscriptions and broadcasts.

`notify_user` / `notify_users` are what the other apps call. They write the inbox rows in
the caller's transaction (a rolled-back order confirms nothing, and nobody hears of it),
idempotent on (user, source_key) by the database's unique index, and send the live events
only after that transaction commits (`tasks.live.live_event_send`).

The inbox row *is* the in-app channel: a kind whose `in_app` preference is off gets no row
(and so nothing live, nothing in `unread_count`), unless the kind is critical
(`kinds.CRITICAL_KINDS`), which bypasses every preference. A broadcast is the exception on
the other side: subscribing to its topic is the opt-in, so every subscriber gets its row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from tasks.context import get_request_id
from tasks.live import live_event_send
from tasks.outbox import outbox_enqueue
from tasks.statemachine import StateMachine

from . import kinds as kinds_mod
from . import presence, validation
from .models import (
    Broadcast,
    Notification,
    NotificationPreference,
    Topic,
    TopicSubscription,
    WebPushSubscription,
)

__all__ = [
    "BROADCAST_BATCH_SIZE",
    "BROADCAST_FANOUT_TASK",
    "BROADCAST_MACHINE",
    "Notice",
    "broadcast_create",
    "broadcast_fanout_batch",
    "notification_mark_read",
    "notifications_mark_all_read",
    "notify_user",
    "notify_users",
    "preferences_set",
    "topic_create",
    "topic_subscribe",
    "topic_unsubscribe",
    "user_group",
    "webpush_subscription_register",
    "webpush_subscription_unregister",
]

logger = logging.getLogger(__name__)

# The name of the task in tasks.py: the outbox publishes by name.
BROADCAST_FANOUT_TASK = "notifications.broadcast_fanout"
BROADCAST_QUEUE = "bulk"
# Subscribers per fan-out batch (one transaction, one INSERT ... SELECT): big enough that
# the per-batch cost (a task, a lock, a few statements) is small beside the rows, small
# enough that a batch never holds the broadcast's row lock for long.
BROADCAST_BATCH_SIZE = 1000

# Up to this many new rows, each goes through `live_event_send`; a bigger batch's events
# are sent together (see `_announce`), this many group_sends in flight at once.
LIVE_ONE_BY_ONE_MAX = 20
LIVE_CONCURRENCY = 64

BROADCAST_MACHINE = StateMachine(
    "broadcast",
    {
        Broadcast.Status.QUEUED: {Broadcast.Status.SENDING, Broadcast.Status.DONE},
        Broadcast.Status.SENDING: {Broadcast.Status.DONE},
    },
)

_NOTIFICATION_TABLE = Notification._meta.db_table
_PREFERENCE_TABLE = NotificationPreference._meta.db_table
_SUBSCRIPTION_TABLE = TopicSubscription._meta.db_table
_TOPIC_TABLE = Topic._meta.db_table
_WEBPUSH_TABLE = WebPushSubscription._meta.db_table


def user_group(user_id: int) -> str:
    """The channel-layer group of one user's notification sockets (per user, never one
    group of everyone: channels_redis's group_send is linear in the group)."""
    return f"notifications.user.{int(user_id)}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification to write: to whom, what it says, and what caused it."""

    user_id: int
    title: str
    source_key: str
    body: str = ""
    url: str = ""


# --- Notify ---------------------------------------------------------------------------------

# One statement for any number of notices: the preference of each user for the kind is
# joined in (no row: the default), and the partial unique index on (user, source_key)
# makes a repeated notice a no-op. RETURNING gives what the live events carry.
_NOTIFY_SQL = f"""
INSERT INTO {_NOTIFICATION_TABLE}
    (user_id, kind, title, body, url, request_id, source_key)
SELECT n.user_id, %(kind)s, n.title, n.body, n.url, %(request_id)s, n.source_key
FROM unnest(%(users)s::bigint[], %(titles)s::text[], %(bodies)s::text[], %(urls)s::text[],
            %(keys)s::text[]) AS n(user_id, title, body, url, source_key)
LEFT JOIN {_PREFERENCE_TABLE} AS p ON p.user_id = n.user_id AND p.kind = %(kind)s
WHERE %(critical)s OR coalesce(p.in_app, %(default_in_app)s)
ON CONFLICT (user_id, source_key) WHERE source_key <> '' DO NOTHING
RETURNING id, user_id, title, body, url, created_at
"""


def notify_user(
    *, user_id: int, kind: str, title: str, body: str, url: str = "", source_key: str
) -> Notification | None:
    """Notify one user, once per `source_key` (e.g. "order:42:confirmed").

    Written in the caller's transaction; the live event goes after its commit. Returns the
    new row, or None when it was written before (a retried caller) or the user's
    preferences keep this kind out of the inbox.
    """
    made = notify_users(
        kind=kind,
        notices=[Notice(user_id=user_id, title=title, body=body, url=url, source_key=source_key)],
    )
    return made[0] if made else None


def notify_users(*, kind: str, notices: Sequence[Notice]) -> list[Notification]:
    """Notify many users in ONE statement (a coupon batch: up to 2,000 notices).

    Same rules as `notify_user` for each notice; every notice needs a `source_key`.
    Returns the rows written now (not those that existed already), in id order.
    """
    if not notices:
        return []
    for notice in notices:
        if not notice.source_key:
            raise ValueError("a notice needs a source_key: it is what makes a retry notify once")
    request_id = get_request_id() or ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _NOTIFY_SQL,
            {
                "kind": kind,
                "request_id": request_id,
                "users": [int(n.user_id) for n in notices],
                "titles": [n.title[:200] for n in notices],
                "bodies": [n.body for n in notices],
                "urls": [n.url[:500] for n in notices],
                "keys": [n.source_key[:200] for n in notices],
                "critical": kinds_mod.is_critical(kind),
                "default_in_app": kinds_mod.DEFAULT_CHANNELS["in_app"],
            },
        )
        rows = cursor.fetchall()
        made = [
            Notification(
                id=row[0],
                user_id=row[1],
                kind=kind,
                title=row[2],
                body=row[3],
                url=row[4],
                created_at=row[5],
                request_id=request_id,
            )
            for row in sorted(rows)
        ]
        _announce(made)
        _enqueue_webpush_deliveries(kind=kind, notification_ids=[n.pk for n in made])
    return made


def notification_event(notification: Notification) -> dict[str, Any]:
    """The live event of a new notification (`type` names the consumer's handler)."""
    return {
        "type": "notification.created",
        "notification": {
            "id": notification.pk,
            "title": notification.title,
            "body": notification.body,
            "url": notification.url,
            "created_at": _iso(notification.created_at),
            "request_id": notification.request_id,
        },
    }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _announce(made: Sequence[Notification]) -> None:
    """One live event per new row, to its user's group, after the commit (nothing on
    rollback). A lost event costs the client a resume (`after_id`), never the row."""
    if len(made) <= LIVE_ONE_BY_ONE_MAX:
        for notification in made:
            live_event_send(
                group=user_group(notification.user_id), event=notification_event(notification)
            )
        return
    # A batch (2,000 coupons) cannot pay `live_event_send`'s cost per event (a fresh event
    # loop and Redis connection each: ~4 ms, seconds per batch): the same per-user events,
    # after the same commit, sent from one loop and pool, a bounded number at a time.
    # Only users with a socket open (presence.py), asked after the commit: most of a
    # coupon batch's owners are not looking, and each group_send is Redis round trips.
    transaction.on_commit(partial(_send_to_online, list(made)))


def _send_to_online(made: list[Notification]) -> None:
    online = presence.online_among(n.user_id for n in made)
    events = [(user_group(n.user_id), notification_event(n)) for n in made if n.user_id in online]
    if events:
        _send_many(events)


def _send_many(events: list[tuple[str, dict[str, Any]]]) -> None:
    # Groups in parallel, each group's events in id order (a client sees them in order).
    by_group: dict[str, list[dict[str, Any]]] = {}
    for group, event in events:
        by_group.setdefault(group, []).append(event)

    async def send_all() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        gate = asyncio.Semaphore(LIVE_CONCURRENCY)

        async def send(group: str, group_events: list[dict[str, Any]]) -> None:
            async with gate:
                for event in group_events:
                    await layer.group_send(group, event)

        results = await asyncio.gather(
            *(send(g, e) for g, e in by_group.items()), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            logger.warning(
                "live notification events to %d of %d users not sent; clients resume",
                len(failures),
                len(by_group),
                exc_info=failures[0],
            )

    try:
        async_to_sync(send_all)()
    except Exception:
        logger.warning("live notification events not sent; clients resume", exc_info=True)


def _enqueue_webpush_deliveries(*, kind: str, notification_ids: Sequence[int]) -> None:
    """HOOK, NOT BUILT YET: Web Push delivery of new inbox rows.

    The Web Push slice (apps/notifications/webpush/) will enqueue, in this same
    transaction, one outbox message per bounded batch of these notifications
    (`outbox_enqueue("notifications.webpush_deliver", args=[ids...])`), whose task sends to
    the subscriptions of the users whose `web_push` preference allows `kind` (critical
    kinds always), outside any transaction. Until then nothing is pushed.
    """
    if notification_ids:
        logger.debug(
            "web push not built: %d %s notifications not pushed", len(notification_ids), kind
        )


# --- Read ------------------------------------------------------------------------------------


def notification_mark_read(*, notification_id: int, user_id: int) -> Notification:
    """Marks the caller's notification read (once: a second call keeps the first time).
    Another user's notification is a 404."""
    now = timezone.now()
    Notification.objects.filter(pk=notification_id, user_id=user_id, read_at__isnull=True).update(
        read_at=now
    )
    notification = Notification.objects.filter(pk=notification_id, user_id=user_id).first()
    if notification is None:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404)
    return notification


def notifications_mark_all_read(*, user_id: int) -> int:
    """Marks every unread notification of the user read; returns how many it marked."""
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).update(
        read_at=timezone.now()
    )


# --- Preferences -------------------------------------------------------------------------


def _invalid(field: str, message: str) -> SurgeError:
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def preferences_set(*, user_id: int, changes: Any) -> None:
    """Sets the user's channels per kind: `{kind: {in_app?, web_push?, email?}}`; a channel
    left out keeps its value. Unknown kinds, channels or non-booleans are 400 `invalid`
    and change nothing."""
    if not isinstance(changes, Mapping):
        raise _invalid("non_field_errors", "Expected an object of kinds.")
    for kind, channels in changes.items():
        if kind not in kinds_mod.KINDS:
            raise _invalid(str(kind), "Unknown kind.")
        if not isinstance(channels, Mapping):
            raise _invalid(str(kind), "Expected an object of channels.")
        for channel, value in channels.items():
            if channel not in kinds_mod.CHANNELS:
                raise _invalid(f"{kind}.{channel}", "Unknown channel.")
            if not isinstance(value, bool):
                raise _invalid(f"{kind}.{channel}", "Must be a boolean.")
    if not changes:
        return
    with transaction.atomic():
        current = {
            pref.kind: pref
            for pref in NotificationPreference.objects.select_for_update().filter(
                user_id=user_id, kind__in=list(changes)
            )
        }
        rows = []
        for kind, channels in changes.items():
            pref = current.get(kind) or NotificationPreference(user_id=user_id, kind=kind)
            for channel, value in channels.items():
                setattr(pref, channel, value)
            rows.append(pref)
        NotificationPreference.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["user", "kind"],
            update_fields=list(kinds_mod.CHANNELS),
        )


# --- Topics ----------------------------------------------------------------------------------


def topic_create(*, slug: str, name: str = "") -> Topic:
    """A new topic (staff). An invalid or taken slug is 400 `invalid`."""
    validation.check_topic_slug(slug)
    try:
        with transaction.atomic():
            return Topic.objects.create(slug=slug, name=name[:200])
    except IntegrityError:
        raise _invalid("slug", "A topic with this slug exists.") from None


def topic_subscribe(*, user_id: int, slug: str) -> Topic:
    """Subscribes the user (again: no change). A valid slug not seen before creates the
    topic; an invalid one is 400 `invalid` and creates nothing."""
    validation.check_topic_slug(slug)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_TOPIC_TABLE} (slug, name) VALUES (%s, '') "
                "ON CONFLICT (slug) DO NOTHING",
                [slug],
            )
        topic = Topic.objects.get(slug=slug)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_SUBSCRIPTION_TABLE} (topic_id, user_id) VALUES (%s, %s) "
                "ON CONFLICT (topic_id, user_id) DO NOTHING",
                [topic.pk, user_id],
            )
    return topic


def topic_unsubscribe(*, user_id: int, slug: str) -> None:
    """Unsubscribes the user; not subscribed (or no such topic) is already done."""
    validation.check_topic_slug(slug)
    TopicSubscription.objects.filter(topic__slug=slug, user_id=user_id).delete()


# --- Web Push subscriptions ------------------------------------------------------------------

_REGISTER_SQL = f"""
INSERT INTO {_WEBPUSH_TABLE}
    (user_id, endpoint, p256dh, auth, user_agent, failure_count)
VALUES (%(user)s, %(endpoint)s, %(p256dh)s, %(auth)s, %(user_agent)s, 0)
ON CONFLICT (endpoint) DO UPDATE SET
    user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
    user_agent = EXCLUDED.user_agent, failure_count = 0, last_failure_at = NULL
RETURNING id, (xmax = 0) AS created
"""


def webpush_subscription_register(
    *, user_id: int, endpoint: str, p256dh: str, auth: str, user_agent: str = ""
) -> tuple[WebPushSubscription, bool]:
    """Stores the browser's subscription for the user; True if it is new. The same
    endpoint again (new keys, another user logged in on that browser) updates it and
    moves it to this user. A bad endpoint or key is a 400 and stores nothing."""
    validation.check_endpoint(endpoint)
    validation.check_keys(p256dh=p256dh, auth=auth)
    with connection.cursor() as cursor:
        cursor.execute(
            _REGISTER_SQL,
            {
                "user": user_id,
                "endpoint": endpoint,
                "p256dh": p256dh,
                "auth": auth,
                "user_agent": user_agent[:512],
            },
        )
        subscription_id, created = cursor.fetchone()
    return WebPushSubscription.objects.get(pk=subscription_id), bool(created)


def webpush_subscription_unregister(*, user_id: int, endpoint: str) -> None:
    """Forgets the caller's subscription at `endpoint` (someone else's is left alone, and
    the answer is the same: no way to probe for endpoints)."""
    WebPushSubscription.objects.filter(user_id=user_id, endpoint=endpoint).delete()


# --- Broadcasts ------------------------------------------------------------------------------


def broadcast_create(
    *, topic_slug: str, title: str, body: str = "", url: str = "", created_by_id: int | None
) -> Broadcast:
    """A broadcast to every subscriber of the topic, fanned out by workers after the
    commit (the first batch's outbox message is written with the row). No such topic is
    a 404; nothing is created."""
    if not title or not title.strip():
        raise _invalid("title", "This field may not be blank.")
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
        _announce(made)
        _enqueue_webpush_deliveries(kind=kinds_mod.BROADCAST, notification_ids=[n.pk for n in made])
    return len(made)
