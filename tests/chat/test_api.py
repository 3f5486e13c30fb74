"""The chat REST API: shapes, `unread`, the directory, paging, and 404 for rooms the
caller is not in."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.chat import services

BASE = "/api/chat/rooms/"

pytestmark = pytest.mark.django_db


def _client(django_user_model: Any, username: str) -> APIClient:
    client = APIClient()
    user = django_user_model.objects.create_user(username, password="pw")
    client.force_authenticate(user)
    client.user = user  # type: ignore[attr-defined]
    return client


@pytest.fixture
def ann(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "ann")


@pytest.fixture
def bob(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "bob")


def _post(client: APIClient, path: str, data: Any = None) -> Any:
    return client.post(path, data, format="json")


def _fill(room_id: int, user: Any, count: int) -> None:
    for n in range(count):
        services.message_send(
            room_id=room_id, sender_id=user.pk, body=f"m{n}", client_msg_id=f"c{n}"
        )


def test_rooms_unread_discover_join_and_leave(ann: APIClient, bob: APIClient) -> None:
    created = _post(ann, BASE, {"name": "general"})
    assert created.status_code == 201
    room = created.json()
    assert set(room) >= {"id", "name"} and room["name"] == "general"
    assert _post(ann, BASE, {"name": ""}).json()["code"] == "invalid"
    assert bob.get(BASE).json()["results"] == []
    assert [r["id"] for r in bob.get(f"{BASE}?discover=true").json()["results"]] == [room["id"]]
    assert ann.get(f"{BASE}?discover=true").json()["results"] == []

    assert _post(bob, f"{BASE}{room['id']}/join/").status_code == 200
    _fill(room["id"], ann.user, 3)  # type: ignore[attr-defined]
    mine = bob.get(BASE).json()
    assert mine["next"] is None
    assert [(r["id"], r["unread"]) for r in mine["results"]] == [(room["id"], 3)]
    assert ann.get(BASE).json()["results"][0]["unread"] == 0
    services.room_read(room_id=room["id"], user_id=bob.user.pk, seq=2)  # type: ignore[attr-defined]
    assert bob.get(BASE).json()["results"][0]["unread"] == 1

    assert _post(bob, f"{BASE}{room['id']}/leave/").status_code == 200
    assert bob.get(BASE).json()["results"] == []
    assert _post(bob, f"{BASE}{room['id'] + 999}/join/").status_code == 404


def test_members_and_messages_are_for_members_only(ann: APIClient, bob: APIClient) -> None:
    room = _post(ann, BASE, {"name": "secret"}).json()
    for path in ("members/", "messages/"):
        answer = bob.get(f"{BASE}{room['id']}/{path}")
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
        assert bob.get(f"{BASE}{room['id'] + 999}/{path}").status_code == 404
    members = ann.get(f"{BASE}{room['id']}/members/").json()["results"]
    assert members == [{"id": ann.user.pk, "username": "ann", "last_read_seq": 0}]  # type: ignore[attr-defined]


def test_history_pages_ascend_after_and_before_a_seq(ann: APIClient) -> None:
    room = _post(ann, BASE, {"name": "history"}).json()
    _fill(room["id"], ann.user, 7)  # type: ignore[attr-defined]
    url = f"{BASE}{room['id']}/messages/"
    page = ann.get(f"{url}?after_seq=2&limit=3").json()
    assert [m["seq"] for m in page["results"]] == [3, 4, 5]
    item = page["results"][0]
    assert set(item) == {
        "room",
        "seq",
        "id",
        "sender",
        "body",
        "client_msg_id",
        "created_at",
        "deleted",
    }
    assert item["sender"] == {"id": ann.user.pk, "username": "ann"}  # type: ignore[attr-defined]
    assert [m["seq"] for m in ann.get(page["next"]).json()["results"]] == [6, 7]
    before = ann.get(f"{url}?before_seq=6&limit=2").json()
    assert [m["seq"] for m in before["results"]] == [4, 5]
    assert [m["seq"] for m in ann.get(before["next"]).json()["results"]] == [2, 3]
    assert [m["seq"] for m in ann.get(url).json()["results"]] == list(range(1, 8))
    for bad in ("after_seq=x", "before_seq=-1", "limit=500"):
        answer = ann.get(f"{url}?{bad}")
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid")


def test_anonymous_callers_are_refused(client: Any) -> None:
    answer = client.get(BASE)
    assert (answer.status_code, answer.json()["code"]) == (401, "not_authenticated")
