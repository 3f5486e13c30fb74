"""The notifications API: shapes, codes, authorisation, and bad input that creates nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from apps.notifications import kinds, services
from apps.notifications.models import (
    Broadcast,
    Notification,
    Topic,
    TopicSubscription,
    WebPushSubscription,
)
from tasks.models import OutboxMessage

from .keys import b64url, browser_keys, off_curve_point

BASE = "/api/notifications/"
SUBS = f"{BASE}webpush/subscriptions/"
FCM = "https://fcm.googleapis.com/fcm/send/abc123"

pytestmark = pytest.mark.django_db


def _client(django_user_model: Any, username: str, **extra: Any) -> APIClient:
    client = APIClient()
    user = django_user_model.objects.create_user(username, password="pw", **extra)
    client.force_authenticate(user)
    client.user = user  # type: ignore[attr-defined]
    return client


@pytest.fixture
def ann(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "ann")


@pytest.fixture
def bob(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "bob")


@pytest.fixture
def staff(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "op", is_staff=True)


def _notify(client: APIClient, n: int) -> list[int]:
    return [
        services.notify_user(
            user_id=client.user.pk,  # type: ignore[attr-defined]
            kind=kinds.ORDER_CONFIRMED,
            title=f"t{i}",
            body="",
            source_key=f"k{i}",
        ).pk  # type: ignore[union-attr]
        for i in range(n)
    ]


def test_the_inbox_is_newest_first_with_unread_count(ann: APIClient, bob: APIClient) -> None:
    ids = _notify(ann, 3)
    _notify(bob, 1)
    ann.post(f"{BASE}{ids[0]}/read/")
    answer = ann.get(BASE).json()
    assert set(answer) == {"results", "next", "unread_count"}
    assert [item["id"] for item in answer["results"]] == ids[::-1]
    assert answer["unread_count"] == 2
    assert set(answer["results"][0]) == {
        "id",
        "kind",
        "title",
        "body",
        "url",
        "read_at",
        "created_at",
        "request_id",
    }
    unread = ann.get(f"{BASE}?unread=true").json()
    assert [item["id"] for item in unread["results"]] == [ids[2], ids[1]]


def test_after_id_is_oldest_first(ann: APIClient) -> None:
    ids = _notify(ann, 4)
    answer = ann.get(f"{BASE}?after_id={ids[1]}").json()
    assert [item["id"] for item in answer["results"]] == ids[2:]
    assert answer["next"] is None
    assert answer["unread_count"] == 4
    bad = ann.get(f"{BASE}?after_id=-1")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"


def test_read_marks(ann: APIClient, bob: APIClient) -> None:
    ids = _notify(ann, 2)
    assert bob.post(f"{BASE}{ids[0]}/read/").status_code == 404
    assert Notification.objects.filter(read_at__isnull=False).count() == 0
    read = ann.post(f"{BASE}{ids[0]}/read/")
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert ann.post(f"{BASE}999999/read/").status_code == 404
    assert ann.post(f"{BASE}read-all/").status_code == 200
    assert ann.get(BASE).json()["unread_count"] == 0


def test_login_is_required() -> None:
    assert APIClient().get(BASE).status_code == 401


def test_preferences_get_and_put(ann: APIClient) -> None:
    prefs = ann.get(f"{BASE}preferences/").json()
    assert set(prefs) == set(kinds.KINDS)
    assert prefs[kinds.COUPON_ISSUED] == {"in_app": True, "web_push": True, "email": False}
    put = ann.put(
        f"{BASE}preferences/",
        {kinds.COUPON_ISSUED: {"in_app": False, "email": True}},
        format="json",
    )
    assert put.status_code == 200
    assert put.json()[kinds.COUPON_ISSUED] == {"in_app": False, "web_push": True, "email": True}
    bad = ann.put(
        f"{BASE}preferences/",
        {kinds.COUPON_ISSUED: {"in_app": True}, "nope": {"in_app": False}},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    assert ann.get(f"{BASE}preferences/").json()[kinds.COUPON_ISSUED]["in_app"] is False


def test_topics_staff_create_anyone_subscribes(ann: APIClient, staff: APIClient) -> None:
    assert ann.post(f"{BASE}topics/", {"slug": "news"}, format="json").status_code == 403
    created = staff.post(f"{BASE}topics/", {"slug": "news", "name": "News"}, format="json")
    assert created.status_code == 201
    assert created.json()["slug"] == "news" and created.json()["name"] == "News"
    again = staff.post(f"{BASE}topics/", {"slug": "news"}, format="json")
    assert again.status_code == 400 and again.json()["code"] == "invalid"
    bad = staff.post(f"{BASE}topics/", {"slug": "Bad Slug"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"

    assert ann.post(f"{BASE}topics/news/subscribe/").status_code == 200
    assert ann.post(f"{BASE}topics/new-one/subscribe/").status_code == 200  # created now
    listed = ann.get(f"{BASE}topics/").json()["results"]
    assert [(t["slug"], t["subscribed"]) for t in listed] == [("new-one", True), ("news", True)]
    assert ann.delete(f"{BASE}topics/news/subscribe/").status_code == 200
    assert TopicSubscription.objects.filter(topic__slug="news").count() == 0


@pytest.mark.parametrize("slug", ["UPPER", "with_underscore", "a" * 65, "sp ace", "ü"])
def test_an_invalid_slug_is_400_and_creates_nothing(ann: APIClient, slug: str) -> None:
    answer = ann.post(f"{BASE}topics/{slug}/subscribe/")
    assert answer.status_code in (400, 404)  # 404 only when the URL itself cannot match
    if answer.status_code == 400:
        assert answer.json()["code"] == "invalid"
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


def test_webpush_register_move_and_unregister(ann: APIClient, bob: APIClient) -> None:
    keys = browser_keys()
    first = ann.post(SUBS, {"endpoint": FCM, "keys": keys}, format="json")
    assert first.status_code == 201, first.content
    new_keys = browser_keys()
    moved = bob.post(SUBS, {"endpoint": FCM, "keys": new_keys}, format="json")
    assert moved.status_code == 200
    subscription = WebPushSubscription.objects.get()
    assert subscription.user_id == bob.user.pk  # type: ignore[attr-defined]
    assert (subscription.p256dh, subscription.auth) == (new_keys["p256dh"], new_keys["auth"])
    # Ann no longer holds it: her DELETE leaves it alone (and looks the same).
    assert ann.delete(SUBS, {"endpoint": FCM}, format="json").status_code == 204
    assert WebPushSubscription.objects.count() == 1
    assert bob.delete(SUBS, {"endpoint": FCM}, format="json").status_code == 204
    assert not WebPushSubscription.objects.exists()
    assert bob.delete(SUBS, {}, format="json").status_code == 400


@pytest.mark.parametrize(
    "keys",
    [
        {"p256dh": "not base64url!", "auth": b64url(b"x" * 16)},
        {"p256dh": b64url(b"\x04" + b"\x01" * 10), "auth": b64url(b"x" * 16)},  # short
        {"p256dh": off_curve_point(), "auth": b64url(b"x" * 16)},  # not on the curve
        {"p256dh": "VALID", "auth": b64url(b"x" * 15)},  # auth too short
        {"p256dh": "VALID", "auth": "***"},
        {"p256dh": "VALID"},
    ],
)
def test_malformed_keys_are_400_invalid(ann: APIClient, keys: dict[str, str]) -> None:
    if keys.get("p256dh") == "VALID":
        keys = dict(keys, p256dh=browser_keys()["p256dh"])
    answer = ann.post(SUBS, {"endpoint": FCM, "keys": keys}, format="json")
    assert answer.status_code == 400 and answer.json()["code"] == "invalid", answer.content
    assert not WebPushSubscription.objects.exists()


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://evil.example/push",
        "https://fcm.googleapis.com.evil.example/x",
        "https://push.services.mozilla.com.evil/x",
        "http://fcm.googleapis.com/fcm/send/x",  # not https
        "https://127.0.0.1/x",  # loopback, but not listed
    ],
)
def test_endpoints_off_the_list_are_refused(ann: APIClient, endpoint: str) -> None:
    answer = ann.post(SUBS, {"endpoint": endpoint, "keys": browser_keys()}, format="json")
    assert answer.status_code == 400 and answer.json()["code"] == "endpoint_not_allowed"
    assert not WebPushSubscription.objects.exists()


def test_subdomain_entries_and_listed_loopback(ann: APIClient) -> None:
    ok = "https://updates.push.services.mozilla.com/wpush/v2/abc"
    assert (
        ann.post(SUBS, {"endpoint": ok, "keys": browser_keys()}, format="json").status_code == 201
    )
    bare = "https://push.services.mozilla.com/x"  # the dot entry is for subdomains only
    answer = ann.post(SUBS, {"endpoint": bare, "keys": browser_keys()}, format="json")
    assert answer.json()["code"] == "endpoint_not_allowed"
    with override_settings(WEBPUSH_ALLOWED_HOSTS=["127.0.0.1"]):
        local = "http://127.0.0.1:9999/push/1"
        created = ann.post(SUBS, {"endpoint": local, "keys": browser_keys()}, format="json")
        assert created.status_code == 201
        notlocal = ann.post(SUBS, {"endpoint": "not a url", "keys": browser_keys()}, format="json")
        assert notlocal.status_code == 400


def test_vapid_public_key(ann: APIClient) -> None:
    with override_settings(VAPID_PUBLIC_KEY="BPublicKey"):
        assert ann.get(f"{BASE}webpush/vapid-public-key/").json() == {"key": "BPublicKey"}


def test_broadcasts(ann: APIClient, staff: APIClient) -> None:
    Topic.objects.create(slug="news")
    body = {"topic": "news", "title": "Hello", "body": "b"}
    assert ann.post(f"{BASE}broadcasts/", body, format="json").status_code == 403
    missing = staff.post(f"{BASE}broadcasts/", dict(body, topic="nope"), format="json")
    assert missing.status_code == 404
    untitled = staff.post(f"{BASE}broadcasts/", {"topic": "news"}, format="json")
    assert untitled.status_code == 400 and untitled.json()["code"] == "invalid"
    blank = staff.post(f"{BASE}broadcasts/", dict(body, title="  "), format="json")
    assert blank.status_code == 400
    assert not Broadcast.objects.exists()
    assert not OutboxMessage.objects.filter(task_name=services.BROADCAST_FANOUT_TASK).exists()

    accepted = staff.post(f"{BASE}broadcasts/", body, format="json")
    assert accepted.status_code == 202
    broadcast_id = accepted.json()["id"]
    assert accepted.json() == {"id": broadcast_id}
    assert OutboxMessage.objects.filter(task_name=services.BROADCAST_FANOUT_TASK).count() == 1
    shown = staff.get(f"{BASE}broadcasts/{broadcast_id}/").json()
    assert shown == {
        "id": broadcast_id,
        "status": "queued",
        "recipients": 0,
        "delivered": 0,
        "failed": 0,
    }
    assert staff.get(f"{BASE}broadcasts/999999/").status_code == 404
    assert ann.get(f"{BASE}broadcasts/{broadcast_id}/").status_code == 403
