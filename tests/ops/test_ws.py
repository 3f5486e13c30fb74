"""The ws process: token auth, origin check, error frames that keep the socket open."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..harness import ApiClient

pytestmark = pytest.mark.live


def test_token_and_origin_give_a_socket(api: ApiClient, ws_connect) -> None:
    user = api.register()
    with ws_connect("/ws/ping/", token=user.token) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello == {"type": "hello", "user": {"id": user.user_id, "username": user.username}}
        ws.send(json.dumps({"type": "ping", "echo": 7}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong", "echo": 7}
        ws.send("not json")
        assert json.loads(ws.recv(timeout=5)) == {"type": "error", "code": "invalid"}
        ws.send(json.dumps({"type": "ping", "echo": 8}))  # still open after a bad frame
        assert json.loads(ws.recv(timeout=5))["echo"] == 8


def test_foreign_or_missing_origin_is_refused(api: ApiClient, ws_connect) -> None:
    user = api.register()
    for origin in ("http://evil.example", None):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect("/ws/ping/", token=user.token, origin=origin)
        assert refused.value.response.status_code == 403


def test_bad_token_is_closed(api: ApiClient, ws_connect) -> None:
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        ws = ws_connect("/ws/ping/", token="nope")
        ws.recv(timeout=5)
