"""`/ws/chat/{room_id}/`: one member's socket to one room.

Order and exactly-once per socket: messages of a room commit in seq order, but their live
events may arrive in any order (one on_commit send per writer, several ws processes) or
not at all (a full channel). So the socket keeps a `cursor`, the seq up to which it has
sent every message the client asked for, and sends only `cursor + 1`: an event further
ahead means everything up to it has committed (seq order is commit order), so the gap is
read from PostgreSQL and sent first; an event at or below the cursor was sent already.
`sent` remembers seqs sent on this socket, so a resume from further back, or a resend's
answer, never repeats one.

A resume runs inside one handler; live events that arrive meanwhile wait in the channel
(a consumer handles one message at a time) and are dropped or sent in order afterwards.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from tasks.live import SentOnce

from . import presence, selectors, services
from .errors import ChatError
from .models import Room

# Seqs remembered per socket; past this the oldest are forgotten.
SENT_SEQS_KEPT = 10_000
CLIENT_MSG_ID_MAX = 64


@database_sync_to_async
def _join_state(room_id: int, user_id: int) -> int | None:
    """The room's last seq if the user is a member, else None."""
    if not selectors.is_member(room_id=room_id, user_id=user_id):
        return None
    return Room.objects.filter(pk=room_id).values_list("last_seq", flat=True).first()


@database_sync_to_async
def _frames_after(room_id: int, after_seq: int, before_seq: int | None) -> list[dict[str, Any]]:
    rows = selectors.messages_between(room_id=room_id, after_seq=after_seq, before_seq=before_seq)
    return [selectors.message_frame(m) for m in rows]


@database_sync_to_async
def _send_message(room_id: int, user_id: int, body: str, client_msg_id: str) -> Any:
    return services.message_send(
        room_id=room_id, sender_id=user_id, body=body, client_msg_id=client_msg_id
    )


def _int_field(frame: dict[str, Any], name: str) -> int | None:
    value = frame.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class ChatConsumer(AsyncJsonWebsocketConsumer):
    room_id: int
    user_id: int
    username: str
    cursor: int
    sent: SentOnce
    recent: deque[float]  # monotonic times of this socket's rate-limited frames
    counted = False
    groups_joined: tuple[str, ...] = ()

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.room_id = int(self.scope["url_route"]["kwargs"]["room_id"])
        self.user_id = int(user.pk)
        self.username = user.get_username()
        if await _join_state(self.room_id, self.user_id) is None:
            await self.close(code=4404)
            return
        self.sent = SentOnce(SENT_SEQS_KEPT)
        self.recent = deque()
        # Counted online, then in the groups, then the cursor read: a message committed
        # after that read reaches this socket live; one before it is history (resume).
        await sync_to_async(presence.presence_join)(self.room_id, self.user_id)
        self.counted = True
        self.groups_joined = (
            selectors.room_group(self.room_id),
            selectors.reader_group(self.room_id, self.user_id),
        )
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        last_seq = await _join_state(self.room_id, self.user_id)
        if last_seq is None:  # left meanwhile
            await self.close(code=4404)
            return
        self.cursor = last_seq
        await self.accept()
        await self.send_json({"type": "hello", "room": self.room_id, "last_seq": last_seq})

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = ()
        if self.counted:
            self.counted = False
            await sync_to_async(presence.presence_leave)(self.room_id, self.user_id)

    # --- Frames from the client -------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kw: Any
    ) -> None:
        try:
            frame = json.loads(text_data or "")
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self._error(ChatError.INVALID, "a frame is a JSON object with a type")
            return
        kind = frame["type"]
        if kind == "message.send":
            await self._on_send(frame)
        elif kind == "resume":
            await self._on_resume(frame)
        elif kind == "typing":
            if self._allowed():
                await self.channel_layer.group_send(
                    selectors.room_group(self.room_id),
                    {
                        "type": "chat.typing",
                        "user": {"id": self.user_id, "username": self.username},
                        "origin": self.channel_name,
                    },
                )
            else:
                await self._error(ChatError.RATE_LIMITED, "too many frames a second")
        elif kind == "read":
            await self._on_read(frame)
        elif kind == "ping":
            # A client's heartbeat doubles as a check against PostgreSQL: a live event lost
            # at the end of a burst (nothing after it shows the gap) is sent now.
            await self._catch_up()
            await self.send_json({"type": "pong"})
        else:
            await self._error(ChatError.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")

    def _allowed(self) -> bool:
        """This socket's flood limit: at most CHAT_RATE_PER_SECOND frames in any second."""
        now = time.monotonic()
        while self.recent and now - self.recent[0] >= 1.0:
            self.recent.popleft()
        if len(self.recent) >= settings.CHAT_RATE_PER_SECOND:
            return False
        self.recent.append(now)
        return True

    async def _on_send(self, frame: dict[str, Any]) -> None:
        body, client_msg_id = frame.get("body"), frame.get("client_msg_id")
        if not isinstance(body, str) or not body.strip():
            await self._error(ChatError.INVALID, "body must be a non-empty string")
            return
        if not isinstance(client_msg_id, str) or not 0 < len(client_msg_id) <= CLIENT_MSG_ID_MAX:
            await self._error(ChatError.INVALID, "client_msg_id must be 1-64 characters")
            return
        if len(body.encode()) > settings.CHAT_MAX_BODY_BYTES:
            await self._error(ChatError.TOO_LARGE, "body is too large")
            return
        if not self._allowed():
            await self._error(ChatError.RATE_LIMITED, "too many messages a second")
            return
        try:
            result = await _send_message(self.room_id, self.user_id, body, client_msg_id)
        except services.NotMember:
            await self.close(code=4404)
            return
        item = selectors.message_frame(result.message)
        if result.created:
            # Committed: the echo goes in order now, and the group's copy is dropped.
            await self._deliver(item)
        else:
            await self._send_once(item)

    async def _on_resume(self, frame: dict[str, Any]) -> None:
        after_seq = _int_field(frame, "after_seq")
        if after_seq is None:
            await self._error(ChatError.INVALID, "after_seq must be a non-negative integer")
            return
        while True:
            page = await _frames_after(self.room_id, after_seq, None)
            for item in page:
                await self._send_once(item)
            if page:
                after_seq = page[-1]["seq"]
                self.cursor = max(self.cursor, after_seq)
            if len(page) < selectors.PAGE_MAX:
                break
        await self.send_json({"type": "resumed", "room": self.room_id, "seq": self.cursor})

    async def _on_read(self, frame: dict[str, Any]) -> None:
        seq = _int_field(frame, "seq")
        if seq is None:
            await self._error(ChatError.INVALID, "seq must be a non-negative integer")
            return
        try:
            await database_sync_to_async(services.room_read)(
                room_id=self.room_id, user_id=self.user_id, seq=seq, origin=self.channel_name
            )
        except services.NotMember:
            await self.close(code=4404)

    async def _error(self, code: ChatError, detail: str) -> None:
        await self.send_json({"type": "error", "code": code.value, "detail": detail})

    # --- Events from the channel layer ------------------------------------------------

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self._deliver(event["message"])

    async def chat_message_deleted(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "message.deleted",
                "room": event["room"],
                "seq": event["seq"],
                "id": event["id"],
            }
        )

    async def chat_typing(self, event: dict[str, Any]) -> None:
        if event.get("origin") != self.channel_name:
            await self.send_json({"type": "typing", "user": event["user"]})

    async def chat_read(self, event: dict[str, Any]) -> None:
        if event.get("origin") != self.channel_name:
            await self.send_json({"type": "read", "room": event["room"], "seq": event["seq"]})

    async def chat_left(self, event: dict[str, Any]) -> None:
        await self.close(code=4404)

    # --- Delivery in seq order, once per socket ---------------------------------------

    async def _deliver(self, item: dict[str, Any]) -> None:
        seq = int(item["seq"])
        if seq <= self.cursor:
            return
        if seq > self.cursor + 1:
            # Everything below `seq` has committed: read the gap rather than wait for it.
            after = self.cursor
            while after < seq - 1:
                page = await _frames_after(self.room_id, after, seq)
                if not page:
                    break
                for missing in page:
                    await self._send_once(missing)
                after = page[-1]["seq"]
        await self._send_once(item)
        self.cursor = seq

    async def _catch_up(self) -> None:
        """Send, in order, every message committed after the cursor."""
        while True:
            page = await _frames_after(self.room_id, self.cursor, None)
            for item in page:
                await self._send_once(item)
                self.cursor = max(self.cursor, int(item["seq"]))
            if len(page) < selectors.PAGE_MAX:
                return

    async def _send_once(self, item: dict[str, Any]) -> None:
        seq = int(item["seq"])
        if not self.sent.first_time(seq):
            return
        await self.send_json({"type": "message", **item})
