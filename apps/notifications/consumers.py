"""`/ws/notifications/`: a user's notifications live, and what they missed on `resume`.

The channel layer is a hint: an event may be dropped (a full channel) or arrive during a
resume. So the consumer remembers which ids it has sent on this socket and never sends one
twice, and a `resume` reads PostgreSQL, which has every notification. Ids are not
committed in id order (two writers), so "sent" is a set of ids, not the highest one: a
live event for an id below one the resume already sent is still new.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.core.errors import ErrorCode
from tasks.live import SentOnce

from . import presence, selectors
from .services import notification_event, user_group

# Ids remembered per socket; past this the oldest are forgotten (a resume from further
# back than that many notifications may repeat one, which clients dedupe by id anyway).
SENT_IDS_KEPT = 10_000


@database_sync_to_async
def _after(user_id: int, after_id: int) -> list[dict[str, Any]]:
    rows = selectors.notifications_after(user_id=user_id, after_id=after_id)
    return [notification_event(row)["notification"] for row in rows]


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    user_id: int
    group: str
    sent: SentOnce
    counted = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user_id = int(user.pk)
        self.group = user_group(self.user_id)
        self.sent = SentOnce(SENT_IDS_KEPT)
        # Counted online, then in the group, before accepting: nothing committed after
        # this point can be missed live.
        await sync_to_async(presence.presence_join)(self.user_id)
        self.counted = True
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": {"id": user.pk}})

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if getattr(self, "counted", False):
            self.counted = False
            await sync_to_async(presence.presence_leave)(self.user_id)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kw: Any
    ) -> None:
        try:
            frame = json.loads(text_data or "")
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or frame.get("type") not in ("resume", "ping"):
            await self.send_json({"type": "error", "code": ErrorCode.INVALID.value})
            return
        if frame["type"] == "ping":
            await self.send_json({"type": "pong"})
            return
        after_id = frame.get("after_id", 0)
        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            await self.send_json({"type": "error", "code": ErrorCode.INVALID.value})
            return
        # Page through PostgreSQL until it has nothing newer. Live events that arrive
        # meanwhile wait in the channel (a consumer handles one message at a time) and
        # are dropped on arrival if this already sent them.
        while True:
            page = await _after(self.user_id, after_id)
            for item in page:
                await self._send_once(item)
            if len(page) < selectors.AFTER_ID_PAGE:
                break
            after_id = page[-1]["id"]
        await self.send_json({"type": "resumed"})

    async def notification_created(self, event: dict[str, Any]) -> None:
        await self._send_once(event["notification"])

    async def _send_once(self, item: dict[str, Any]) -> None:
        notification_id = int(item["id"])
        if not self.sent.first_time(notification_id):
            return
        await self.send_json({"type": "notification", **item})
