"""Every read of the notifications app."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, QuerySet

from apps.core.errors import ErrorCode, SurgeError

from . import kinds as kinds_mod
from .models import Broadcast, Notification, NotificationPreference, Topic, TopicSubscription

# The most a resume or an `after_id` page returns at once; the client asks again from the
# last id it got.
AFTER_ID_PAGE = 200


def notification_list(*, user_id: int, unread: bool = False) -> QuerySet[Notification]:
    rows = Notification.objects.filter(user_id=user_id)
    if unread:
        rows = rows.filter(read_at__isnull=True)
    return rows


def notifications_after(
    *, user_id: int, after_id: int, limit: int = AFTER_ID_PAGE
) -> list[Notification]:
    """The user's notifications with id > `after_id`, oldest first (catch-up, resume)."""
    return list(
        Notification.objects.filter(user_id=user_id, id__gt=after_id).order_by("id")[:limit]
    )


def unread_count(*, user_id: int) -> int:
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()


def preferences_get(*, user_id: int) -> dict[str, dict[str, bool]]:
    """`{kind: {in_app, web_push, email}}` for every kind: the user's rows over the defaults."""
    stored = {pref.kind: pref for pref in NotificationPreference.objects.filter(user_id=user_id)}
    answer: dict[str, dict[str, bool]] = {}
    for kind in kinds_mod.KINDS:
        pref = stored.get(kind)
        answer[kind] = {
            channel: bool(getattr(pref, channel)) if pref else default
            for channel, default in kinds_mod.DEFAULT_CHANNELS.items()
        }
    return answer


def topic_list(*, user_id: int) -> QuerySet[Any]:
    return Topic.objects.annotate(
        subscribed=Exists(TopicSubscription.objects.filter(topic=OuterRef("pk"), user_id=user_id))
    ).order_by("slug")


def broadcast_get(*, broadcast_id: int) -> Broadcast:
    broadcast = Broadcast.objects.filter(pk=broadcast_id).first()
    if broadcast is None:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404)
    return broadcast
