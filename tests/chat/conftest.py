"""Chat fixtures: members with tokens made in the database (no password hashing), and a
socket helper that reads frames by type."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from apps.chat import services
from apps.chat.models import Room


@dataclass
class Member:
    user: Any
    token: str

    @property
    def id(self) -> int:
        return int(self.user.pk)


@pytest.fixture
def make_member(transactional_db: None, django_user_model: Any) -> Callable[[], Member]:
    def make() -> Member:
        user = django_user_model.objects.create(username=f"u-{uuid.uuid4().hex[:10]}")
        return Member(user=user, token=Token.objects.create(user=user).key)

    return make


@pytest.fixture
def make_room(transactional_db: None) -> Callable[..., Room]:
    def make(owner: Member, *others: Member) -> Room:
        room = services.room_create(name=f"room-{uuid.uuid4().hex[:6]}", user_id=owner.id)
        for member in others:
            services.room_join(room_id=room.pk, user_id=member.id)
        return room

    return make


class ChatSocket:
    """A connected chat socket: `hello` already read; frames of other types are kept."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.hello = self.next(timeout=5)
        assert self.hello["type"] == "hello", self.hello

    def send(self, frame: dict[str, Any] | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def say(self, body: str, client_msg_id: str | None = None) -> str:
        client_msg_id = client_msg_id or uuid.uuid4().hex
        self.send({"type": "message.send", "body": body, "client_msg_id": client_msg_id})
        return client_msg_id

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return frame

    def until(self, frame_type: str, want: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The next `want` frames of `frame_type`; frames of other types are skipped."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < want:
            frame = self.next(timeout=max(0.1, deadline - time.monotonic()))
            if frame["type"] == frame_type:
                got.append(frame)
        return got

    def quiet(self, seconds: float = 0.7) -> list[dict[str, Any]]:
        """Every frame that arrives until none has for `seconds`."""
        extra: list[dict[str, Any]] = []
        try:
            while True:
                extra.append(self.next(timeout=seconds))
        except TimeoutError:
            return extra

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chat_socket(ws_connect: Callable[..., Any]) -> Iterator[Callable[..., ChatSocket]]:
    opened: list[ChatSocket] = []

    def connect(room_id: int, member: Member) -> ChatSocket:
        sock = ChatSocket(ws_connect(f"/ws/chat/{room_id}/", token=member.token))
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()
