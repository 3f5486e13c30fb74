"""A diagnostic WebSocket: proves the ws process, its auth and its origin check."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.core.errors import ErrorCode


class PingConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()
        await self.send_json({"type": "hello", "user": {"id": user.pk, "username": user.username}})

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kw: Any
    ) -> None:
        try:
            frame = json.loads(text_data or "")
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or frame.get("type") != "ping":
            await self.send_json({"type": "error", "code": ErrorCode.INVALID.value})
            return
        await self.send_json({"type": "pong", "echo": frame.get("echo")})
