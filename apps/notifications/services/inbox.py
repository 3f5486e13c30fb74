"""The inbox: notify (what the other apps call) and read marks.

`notify_user` / `notify_users` write the inbox rows in the caller's transaction (a
rolled-back order confirms nothing, and nobody hears of it), idempotent on (user,
source_key) by the database's unique index, and send the live events only after that
transaction commits (`tasks.live`).

The inbox row *is* the in-app channel: a kind whose `in_app` preference is off gets no row
(and so nothing live, nothing in `unread_count`), unless the kind is critical
(`kinds.CRITICAL_KINDS`), which bypasses every preference. A broadcast is the exception on
the other side: subscribing to its topic is the opt-in, so every subscriber gets its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from tasks.context import get_request_id
from tasks.live import LiveEvent, live_events_send

from .. import kinds as kinds_mod
from .. import presence
from ..models import Notification, NotificationPreference
from .deliveries import deliveries_insert_sql, push_params, webpush_deliveries_created

__all__ = [
    "Notice",
    "notification_event",
    "notification_mark_read",
    "notifications_announce",
    "notifications_mark_all_read",
    "notify_user",
    "notify_users",
    "user_group",
]

# Up to this many new rows, their events go to every user's group; a bigger batch's go only
# to users with a socket open (presence.py), asked after the commit: most of a coupon
# batch's owners are not looking, and each group_send is Redis round trips.
LIVE_ASK_PRESENCE_ABOVE = 20

_NOTIFICATION_TABLE = Notification._meta.db_table
_PREFERENCE_TABLE = NotificationPreference._meta.db_table


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


# One statement for any number of notices: the preference of each user for the kind is
# joined in (no row: the default), and the partial unique index on (user, source_key)
# makes a repeated notice a no-op. RETURNING gives what the live events carry. The Web
# Push deliveries of the new rows are written by the same statement.
_NOTIFY_SQL = f"""
WITH made AS (
    INSERT INTO {_NOTIFICATION_TABLE}
        (user_id, kind, title, body, url, request_id, source_key)
    SELECT n.user_id, %(kind)s, n.title, n.body, n.url, %(request_id)s, n.source_key
    FROM unnest(%(users)s::bigint[], %(titles)s::text[], %(bodies)s::text[],
                %(urls)s::text[], %(keys)s::text[]) AS n(user_id, title, body, url, source_key)
    LEFT JOIN {_PREFERENCE_TABLE} AS p ON p.user_id = n.user_id AND p.kind = %(kind)s
    WHERE %(critical)s OR coalesce(p.in_app, %(default_in_app)s)
    ON CONFLICT (user_id, source_key) WHERE source_key <> '' DO NOTHING
    RETURNING id, user_id, title, body, url, created_at
), pushes AS ({deliveries_insert_sql(rows="made")})
SELECT made.*, (SELECT count(*) FROM pushes) FROM made
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
                **push_params(),
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
        notifications_announce(made)
        webpush_deliveries_created(count=rows[0][6] if rows else 0)
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


def notifications_announce(made: Sequence[Notification]) -> None:
    """One live event per new row, to its user's group, after the commit (nothing on
    rollback), each user's in id order. A lost event costs the client a resume
    (`after_id`), never the row."""
    events = [(user_group(n.user_id), notification_event(n)) for n in made]
    if len(events) <= LIVE_ASK_PRESENCE_ABOVE:
        live_events_send(events)
        return
    user_of = {user_group(n.user_id): n.user_id for n in made}

    def online_only(events: list[LiveEvent]) -> list[LiveEvent]:
        online = presence.online_among(user_of.values())
        return [(group, event) for group, event in events if user_of[group] in online]

    live_events_send(events, select=online_only)


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
