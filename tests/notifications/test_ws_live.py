"""The notifications socket on real uvicorn: live events after commit, and a resume that
gives a reconnecting client exactly what it missed, in order, without duplicates."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from apps.notifications import kinds, services
from apps.notifications.services import Notice

from ..harness import ApiClient

pytestmark = pytest.mark.live

PATH = "/ws/notifications/"


def _frames(ws: Any, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `want` notification frames (other frame types are skipped)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame["type"] == "notification":
            got.append(frame)
    return got


def _quiet(ws: Any, seconds: float = 0.7) -> list[dict[str, Any]]:
    extra: list[dict[str, Any]] = []
    try:
        while True:
            frame = json.loads(ws.recv(timeout=seconds))
            if frame["type"] == "notification":
                extra.append(frame)
    except TimeoutError:
        return extra


def _until(ws: Any, frame_type: str) -> list[dict[str, Any]]:
    got = []
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame["type"] == frame_type:
            return got
        if frame["type"] == "notification":
            got.append(frame)


def _notify(user_id: int, key: str, title: str) -> int:
    made = services.notify_user(
        user_id=user_id, kind=kinds.ORDER_CONFIRMED, title=title, body="b", source_key=key
    )
    assert made is not None
    return made.pk


def test_connected_clients_get_their_own_notifications_live(
    api: ApiClient, ws_connect: Any
) -> None:
    ann, bob = api.register(), api.register()
    assert ann.user_id and bob.user_id
    with ws_connect(PATH, token=ann.token) as ann_ws, ws_connect(PATH, token=bob.token) as bob_ws:
        for ws in (ann_ws, bob_ws):
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        first = _notify(ann.user_id, "a1", "for ann")
        # A bulk batch (over the one-by-one limit) reaches the connected users too.
        notices = [
            Notice(user_id=bob.user_id, title=f"b{i}", source_key=f"b{i}") for i in range(30)
        ]
        bulk = services.notify_users(kind=kinds.COUPON_ISSUED, notices=notices)
        got = _frames(ann_ws, 1)
        assert got[0]["id"] == first
        assert set(got[0]) == {"type", "id", "title", "body", "url", "created_at", "request_id"}
        assert got[0]["title"] == "for ann"
        assert [f["id"] for f in _frames(bob_ws, 30)] == [n.pk for n in bulk]
        assert _quiet(ann_ws) == [] and _quiet(bob_ws) == []


def test_a_client_that_reconnects_and_resumes_gets_exactly_what_it_missed(
    api: ApiClient, ws_connect: Any
) -> None:
    ann = api.register()
    assert ann.user_id
    with ws_connect(PATH, token=ann.token) as ws:
        json.loads(ws.recv(timeout=5))
        seen = [_notify(ann.user_id, f"s{i}", f"seen {i}") for i in range(3)]
        assert [f["id"] for f in _frames(ws, 3)] == seen
    missed = [_notify(ann.user_id, f"m{i}", f"missed {i}") for i in range(5)]
    with ws_connect(PATH, token=ann.token) as ws:
        json.loads(ws.recv(timeout=5))
        ws.send(json.dumps({"type": "resume", "after_id": seen[-1]}))
        resumed = _until(ws, "resumed")
        assert [f["id"] for f in resumed] == missed
        assert [f["title"] for f in resumed] == [f"missed {i}" for i in range(5)]
        # Then live ones, and a second resume sends nothing already sent on this socket.
        live = _notify(ann.user_id, "after", "live again")
        assert [f["id"] for f in _frames(ws, 1)] == [live]
        ws.send(json.dumps({"type": "resume", "after_id": seen[-1]}))
        assert _until(ws, "resumed") == []
        ws.send(json.dumps({"type": "resume", "after_id": "x"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "error", "code": "invalid"}


def test_origin_and_token_are_required(api: ApiClient, ws_connect: Any) -> None:
    ann = api.register()
    with pytest.raises(InvalidStatus):
        ws_connect(PATH, token=ann.token, origin="http://evil.example")
    with pytest.raises(Exception):  # noqa: B017 - refused or closed, as for /ws/ping/
        ws = ws_connect(PATH, token="nope")
        ws.recv(timeout=5)


def test_a_broadcast_reaches_every_subscriber_once_through_the_worker(
    api: ApiClient, ws_connect: Any, live_worker: Any, django_user_model: Any
) -> None:
    from apps.notifications.models import Broadcast, Notification

    listener = api.register()
    assert listener.user_id
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"bc-{i}-{time.time_ns()}") for i in range(1500)]
    )
    for user_id in [u.pk for u in users] + [listener.user_id]:
        services.topic_subscribe(user_id=user_id, slug="live-news")
    with ws_connect(PATH, token=listener.token) as ws:
        json.loads(ws.recv(timeout=5))
        broadcast = services.broadcast_create(
            topic_slug="live-news", title="Breaking", body="b", created_by_id=None
        )
        frame = _frames(ws, 1, timeout=30)[0]
        assert frame["title"] == "Breaking"
    deadline = time.monotonic() + 60
    while Broadcast.objects.get(pk=broadcast.pk).status != "done":
        assert time.monotonic() < deadline, "broadcast not done"
        time.sleep(0.2)
    done = Broadcast.objects.get(pk=broadcast.pk)
    assert done.recipients == 1501
    rows = Notification.objects.filter(broadcast=broadcast)
    assert rows.count() == 1501
    assert rows.values("user_id").distinct().count() == 1501
