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

from ..conftest import LOG_DIR
from ..harness import LiveProcess, free_port, http_ready


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


@pytest.fixture(scope="module")
def second_ws(live_env: dict[str, str], live_ws: LiveProcess) -> Iterator[LiveProcess]:
    """A second ws process (uvicorn on config.asgi) beside `live_ws`, on the same database
    and Redis: members on different processes share the room's group."""
    port = free_port()
    process = LiveProcess(
        "ws-chat-2",
        [
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            "--lifespan",
            "off",
            "--no-access-log",
        ],
        env=live_env,
        log_dir=LOG_DIR,
        url=f"ws://127.0.0.1:{port}",
        ready=lambda p: http_ready(f"http://127.0.0.1:{port}/healthz"),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def chat_socket_on(second_ws: LiveProcess) -> Iterator[Callable[..., ChatSocket]]:
    """`chat_socket_on(room_id, member)`: a chat socket on the second ws process."""
    from websockets.sync.client import connect

    opened: list[ChatSocket] = []

    def open_socket(room_id: int, member: Member) -> ChatSocket:
        url = f"{second_ws.url}/ws/chat/{room_id}/?token={member.token}"
        origin: Any = "http://localhost:8000"
        sock = ChatSocket(connect(url, origin=origin, open_timeout=5))
        opened.append(sock)
        return sock

    yield open_socket
    for sock in opened:
        sock.close()
