"""Rooms, who is in them, and their messages in a per-room `seq` order.

`Room.last_seq` is the room's counter: a message takes `last_seq + 1` in the transaction
that stores it (an UPDATE … RETURNING on the room row, which also serialises the room's
writers until the commit), so seqs are 1, 2, 3 … with no gap, and commit order is seq
order. A deleted message stays as a tombstone (empty body, `deleted`), keeping its seq.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Room(models.Model):
    name = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="chat_rooms_created"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(last_seq__gte=0), name="chat_room_seq_gte_0")
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"


class Membership(models.Model):
    # db_index=False: the unique (room, user) index starts with the room.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_memberships"
    )
    last_read_seq = models.BigIntegerField(default=0)
    joined_at = models.DateTimeField(auto_now_add=True)
    # The offline-notification pass (services.offline_notify) decided every message up
    # to `notify_checked_seq`; `last_notified_seq` is the seq that last caused a
    # notification. A member is notified again only after reading past it: one per burst.
    notify_checked_seq = models.BigIntegerField(default=0)
    last_notified_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="chat_membership_once"),
            models.CheckConstraint(
                condition=Q(last_read_seq__gte=0), name="chat_membership_read_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} in room {self.room_id}"


class Message(models.Model):
    # db_index=False: the unique (room, seq) index starts with the room.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    seq = models.BigIntegerField()
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="chat_messages"
    )
    body = models.TextField(blank=True)
    client_msg_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted = models.BooleanField(default=False)

    class Meta:
        constraints = [
            # Also the index every history and resume query walks.
            models.UniqueConstraint(fields=["room", "seq"], name="chat_message_room_seq"),
            models.UniqueConstraint(
                fields=["room", "sender", "client_msg_id"], name="chat_message_client_id_once"
            ),
            models.CheckConstraint(condition=Q(seq__gte=1), name="chat_message_seq_gte_1"),
            models.CheckConstraint(
                condition=Q(deleted=False) | Q(body=""), name="chat_message_tombstone_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"room {self.room_id} #{self.seq}"


__all__ = ["Membership", "Message", "Room"]
