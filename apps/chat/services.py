"""Every write of the chat app.

A message is stored with the room's next seq, and in the same transaction: the sender's
read mark, the outbox row of the offline-notification pass, and the live event to the
room (sent after the commit). The database is the truth; the live event is a hint that
carries the seq, and a client that misses one resumes from PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction

from apps.notifications import kinds
from apps.notifications.services import notify_user
from tasks.live import live_event_send
from tasks.outbox import outbox_enqueue

from . import presence
from .models import Membership, Message, Room
from .selectors import message_frame, reader_group, room_group

# Members one offline-notification pass decides; a full pass enqueues the next.
NOTIFY_BATCH = 500
NOTIFY_TASK = "chat.notify_offline"


class NotMember(Exception):
    """The user is not (or no longer) a member of the room."""


@dataclass(frozen=True)
class SendResult:
    message: Message
    created: bool  # False: this client_msg_id was stored before; `message` is the original


def room_create(*, name: str, user_id: int) -> Room:
    with transaction.atomic():
        room = Room.objects.create(name=name, created_by_id=user_id)
        Membership.objects.create(room=room, user_id=user_id)
    return room


def room_join(*, room_id: int, user_id: int) -> Room:
    """Join (again: nothing changes). The history before joining counts as read.
    `Room.DoesNotExist` for an unknown room."""
    room = Room.objects.get(pk=room_id)
    Membership.objects.get_or_create(
        room=room,
        user_id=user_id,
        defaults={"last_read_seq": room.last_seq, "notify_checked_seq": room.last_seq},
    )
    return room


def room_leave(*, room_id: int, user_id: int) -> Room:
    """Leave (when not a member: nothing changes); the user's sockets to the room close."""
    room = Room.objects.get(pk=room_id)
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(room=room, user_id=user_id).delete()
        if deleted:
            live_event_send(group=reader_group(room_id, user_id), event={"type": "chat.left"})
    return room


def _next_seq(room_id: int) -> int:
    """The room's next seq, in the caller's transaction; the room row stays locked until
    it ends, so the room's messages commit in seq order and a rollback leaves no gap."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE chat_room SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq",
            [room_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise NotMember(f"room {room_id} does not exist")
    return int(row[0])


def _stored(*, room_id: int, sender_id: int, client_msg_id: str) -> Message | None:
    return (
        Message.objects.select_related("sender")
        .filter(room_id=room_id, sender_id=sender_id, client_msg_id=client_msg_id)
        .first()
    )


def message_send(*, room_id: int, sender_id: int, body: str, client_msg_id: str) -> SendResult:
    """Store a message once per (room, sender, client_msg_id); a resend gets the original
    and stores, enqueues and broadcasts nothing. Raises `NotMember`."""
    original = _stored(room_id=room_id, sender_id=sender_id, client_msg_id=client_msg_id)
    if original is not None:
        return SendResult(message=original, created=False)
    try:
        with transaction.atomic():
            seq = _next_seq(room_id)
            if not Membership.objects.filter(room_id=room_id, user_id=sender_id).exists():
                raise NotMember(f"user {sender_id} is not in room {room_id}")
            message = Message.objects.create(
                room_id=room_id,
                seq=seq,
                sender=get_user_model().objects.get(pk=sender_id),
                body=body,
                client_msg_id=client_msg_id,
            )
            # One's own message is read.
            Membership.objects.filter(
                room_id=room_id, user_id=sender_id, last_read_seq__lt=seq
            ).update(last_read_seq=seq)
            outbox_enqueue(NOTIFY_TASK, args=[room_id])
            live_event_send(
                group=room_group(room_id),
                event={"type": "chat.message", "message": message_frame(message)},
            )
    except IntegrityError:
        # The same client_msg_id on another connection committed first (we waited for
        # the room lock behind it); the rollback gave our seq back.
        original = _stored(room_id=room_id, sender_id=sender_id, client_msg_id=client_msg_id)
        if original is None:
            raise
        return SendResult(message=original, created=False)
    return SendResult(message=message, created=True)


def room_read(*, room_id: int, user_id: int, seq: int, origin: str = "") -> int:
    """Move the member's read mark up to `seq` (never down, never past the room's last
    message) and tell their other connections (`origin` is the reading socket's channel).
    Returns the mark. Raises `NotMember`."""
    with transaction.atomic():
        last_seq = Room.objects.filter(pk=room_id).values_list("last_seq", flat=True).first()
        membership = (
            Membership.objects.select_for_update().filter(room_id=room_id, user_id=user_id).first()
        )
        if last_seq is None or membership is None:
            raise NotMember(f"user {user_id} is not in room {room_id}")
        mark = min(seq, last_seq)
        if mark <= membership.last_read_seq:
            return membership.last_read_seq
        membership.last_read_seq = mark
        membership.save(update_fields=["last_read_seq"])
        live_event_send(
            group=reader_group(room_id, user_id),
            event={"type": "chat.read", "room": room_id, "seq": mark, "origin": origin},
        )
    return mark


def message_delete(*, message_id: int) -> Message:
    """A moderator's delete: the message becomes a tombstone (empty body, `deleted`, same
    seq) and the room's connections get `message.deleted`. Deleting twice changes nothing."""
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message_id)
        if message.deleted:
            return message
        message.body = ""
        message.deleted = True
        message.save(update_fields=["body", "deleted"])
        live_event_send(
            group=room_group(message.room_id),
            event={
                "type": "chat.message_deleted",
                "room": message.room_id,
                "seq": message.seq,
                "id": message.pk,
            },
        )
    return message


def offline_notify(*, room_id: int) -> int:
    """One pass of the room's offline notifications (the `chat.notify_offline` task, one
    per stored message): each member whose pending messages are not decided yet is
    notified if no socket of theirs is open to the room and no notification of theirs
    is unread since their last read mark (so one per burst, not one per message).
    Returns how many were notified. Safe to run twice: a decided member is not pending,
    and `source_key` keeps a retried pass from notifying twice."""
    with transaction.atomic():
        room = Room.objects.filter(pk=room_id).first()
        if room is None:
            return 0
        # Locked in id order, without skipping: passes of one room take turns, so none
        # decides a member another pass is still deciding.
        pending = list(
            Membership.objects.select_for_update()
            .filter(room_id=room_id, notify_checked_seq__lt=room.last_seq)
            .order_by("id")[:NOTIFY_BATCH]
        )
        if not pending:
            return 0
        online = presence.online_among(room_id, [m.user_id for m in pending])
        notified = 0
        for membership in pending:
            burst_open = membership.last_notified_seq > membership.last_read_seq
            unread = room.last_seq > membership.last_read_seq
            if membership.user_id not in online and unread and not burst_open:
                notify_user(
                    user_id=membership.user_id,
                    kind=kinds.CHAT_MESSAGE,
                    title=f"New messages in {room.name}"[:200],
                    body="",
                    url=f"/chat/?room={room_id}",
                    source_key=f"chat:{room_id}:{membership.user_id}:{membership.last_read_seq}",
                )
                membership.last_notified_seq = room.last_seq
                notified += 1
            membership.notify_checked_seq = room.last_seq
        Membership.objects.bulk_update(pending, ["notify_checked_seq", "last_notified_seq"])
        if len(pending) == NOTIFY_BATCH:
            outbox_enqueue(NOTIFY_TASK, args=[room_id])
    return notified
