"""Every read of the chat app. `*_for_user` selectors authorise: a room the caller is not
in is `Room.DoesNotExist` (a 404 that leaks nothing), never a 403."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import Membership, Message, Room

# A history page (REST) and a resume page (WebSocket) hold at most this many messages.
PAGE_MAX = 200


def room_group(room_id: int) -> str:
    """The channel-layer group of everyone connected to a room."""
    return f"chat.room.{room_id}"


def reader_group(room_id: int, user_id: int) -> str:
    """The group of one member's connections to one room (read marks, a leave)."""
    return f"chat.room.{room_id}.user.{user_id}"


def is_member(*, room_id: int, user_id: int) -> bool:
    return Membership.objects.filter(room_id=room_id, user_id=user_id).exists()


def room_get_for_user(*, room_id: int, user_id: int) -> Room:
    """The room, if the user is a member; else `Room.DoesNotExist`."""
    return Room.objects.get(pk=room_id, memberships__user_id=user_id)


def membership_list_for_user(*, user_id: int) -> QuerySet[Membership]:
    """The caller's memberships, each with its room (its `unread` is
    `room.last_seq - last_read_seq`)."""
    return Membership.objects.filter(user_id=user_id).select_related("room")


def room_list_discoverable(*, user_id: int) -> QuerySet[Room]:
    """Rooms the caller may join: every room it is not in (rooms are public)."""
    return Room.objects.exclude(memberships__user_id=user_id)


def member_list(*, room_id: int) -> QuerySet[Membership]:
    return Membership.objects.filter(room_id=room_id).select_related("user")


def message_list(
    *,
    room_id: int,
    after_seq: int | None = None,
    before_seq: int | None = None,
    limit: int = 50,
) -> list[Message]:
    """Up to `limit` messages ascending by seq: the first ones after `after_seq`, or (with
    `before_seq`) the last ones before it, still ascending."""
    limit = max(1, min(limit, PAGE_MAX))
    rows = Message.objects.filter(room_id=room_id).select_related("sender")
    if after_seq is not None:
        rows = rows.filter(seq__gt=after_seq)
    if before_seq is not None:
        page = list(rows.filter(seq__lt=before_seq).order_by("-seq")[:limit])
        page.reverse()
        return page
    return list(rows.order_by("seq")[:limit])


def messages_between(*, room_id: int, after_seq: int, before_seq: int | None) -> list[Message]:
    """The first messages (up to PAGE_MAX) with `after_seq < seq < before_seq`, ascending:
    a socket's gap or catch-up."""
    rows = Message.objects.filter(room_id=room_id, seq__gt=after_seq).select_related("sender")
    if before_seq is not None:
        rows = rows.filter(seq__lt=before_seq)
    return list(rows.order_by("seq")[:PAGE_MAX])


def message_frame(message: Message) -> dict[str, object]:
    """A message as the WebSocket frame and the REST item show it (without `type`)."""
    return {
        "room": message.room_id,
        "seq": message.seq,
        "id": message.pk,
        "sender": {"id": message.sender_id, "username": message.sender.get_username()},
        "body": message.body,
        "client_msg_id": message.client_msg_id,
        "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
        "deleted": message.deleted,
    }
