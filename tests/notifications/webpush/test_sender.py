"""The Web Push sender against the test push service (a real HTTP server that checks VAPID
and decrypts every push as a browser's push service and browser would)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from apps.notifications.webpush import sender
from apps.notifications.webpush.keys import VapidKeyPair, vapid_keys_generate
from apps.notifications.webpush.sender import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLarge,
    PushOutcome,
    PushTransient,
    Urgency,
    push_send,
)

from .push_service import Answer, PushService, TestSubscription

pytestmark = pytest.mark.usefixtures("vapid_keys")


def send(subscription: TestSubscription, payload: object = "hello", **options: object):
    return push_send(
        endpoint=subscription.endpoint,
        p256dh=subscription.p256dh,
        auth=subscription.auth,
        payload=payload,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def test_a_push_arrives_encrypted_with_the_right_payload(
    push_service: PushService, vapid_keys: VapidKeyPair
) -> None:
    subscription = push_service.subscribe(application_server_key=vapid_keys.public_key)
    message = {"title": "Coupon issued", "body": "Ünïcode ✓", "url": "/coupons/", "id": 7}

    result = send(subscription, message, ttl_s=3600, urgency=Urgency.HIGH, topic="coupon-7")

    assert result.outcome is PushOutcome.DELIVERED
    assert result.status_code == 201
    assert push_service.rejections == []
    [push] = push_service.delivered_to(subscription)
    assert push.json() == message
    assert (push.ttl, push.urgency, push.topic) == (3600, "high", "coupon-7")
    assert push.claims["sub"] == "mailto:webpush-tests@example.com"


def test_bytes_and_text_payloads_arrive_as_sent(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    largest = bytes(range(256)) * (MAX_PAYLOAD_BYTES // 256) + b"x" * (MAX_PAYLOAD_BYTES % 256)

    assert send(subscription, largest).outcome is PushOutcome.DELIVERED
    assert send(subscription, "plain text").outcome is PushOutcome.DELIVERED

    assert [p.payload for p in push_service.delivered_to(subscription)] == [
        largest,
        b"plain text",
    ]
    with pytest.raises(PayloadTooLarge):
        send(subscription, largest + b"y")


def test_ttl_and_urgency_are_always_sent(push_service: PushService) -> None:
    subscription = push_service.subscribe()

    send(subscription)  # the defaults
    send(subscription, ttl_s=0)  # an explicit 0 is sent as 0, not left out

    first, second = push_service.delivered_to(subscription)
    assert (first.ttl, first.urgency, first.topic) == (sender.DEFAULT_TTL_S, "normal", None)
    assert second.ttl == 0
    assert all(a.ttl is not None for a in push_service.attempts)


def test_the_vapid_header_is_reused_per_origin_and_differs_between_origins(
    push_service_factory: Callable[[], PushService],
) -> None:
    one, other = push_service_factory(), push_service_factory()
    on_one = one.subscribe_many(3)
    on_other = other.subscribe_many(2)

    for subscription in [*on_one, *on_other, *on_one]:
        assert send(subscription).outcome is PushOutcome.DELIVERED

    headers_one = {p.authorization for p in one.delivered}
    headers_other = {p.authorization for p in other.delivered}
    assert len(one.delivered) == 6 and len(other.delivered) == 2
    assert len(headers_one) == 1 and len(headers_other) == 1
    assert headers_one != headers_other
    assert {p.claims["aud"] for p in one.delivered} == {one.origin}
    assert {p.claims["aud"] for p in other.delivered} == {other.origin}


def test_the_vapid_header_is_re_signed_after_six_hours_and_never_nears_its_expiry(
    push_service: PushService, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = push_service.subscribe()
    start = sender._now()
    send(subscription)
    monkeypatch.setattr(sender, "_now", lambda: start + sender.VAPID_REFRESH_AFTER_S - 60)
    send(subscription)
    monkeypatch.setattr(sender, "_now", lambda: start + sender.VAPID_REFRESH_AFTER_S + 1)
    send(subscription)

    first, still_first, renewed = push_service.delivered_to(subscription)
    assert first.authorization == still_first.authorization
    assert renewed.authorization != first.authorization
    assert renewed.claims["exp"] - first.claims["exp"] > sender.VAPID_REFRESH_AFTER_S
    # Signed 12 h ahead: used until 6 h before it expires.
    assert first.claims["exp"] - int(start) == sender.VAPID_EXPIRY_S


def test_new_vapid_keys_are_used_at_once(push_service: PushService, settings: Any) -> None:
    subscription = push_service.subscribe()
    send(subscription)
    rotated = vapid_keys_generate()
    settings.VAPID_PUBLIC_KEY, settings.VAPID_PRIVATE_KEY = rotated
    send(subscription)

    before, after = push_service.delivered_to(subscription)
    assert before.authorization != after.authorization
    assert after.authorization.endswith(f"k={rotated.public_key}")


def test_a_key_other_than_the_subscriptions_is_refused_and_counted_as_failed(
    push_service: PushService,
) -> None:
    subscription = push_service.subscribe(application_server_key=vapid_keys_generate()[0])

    result = send(subscription)

    assert (result.outcome, result.status_code) == (PushOutcome.FAILED, 403)
    assert push_service.delivered == []


@pytest.mark.parametrize("status", [404, 410])
def test_404_and_410_mean_the_subscription_is_gone(push_service: PushService, status: int) -> None:
    subscription = push_service.subscribe(status)

    result = send(subscription)

    assert (result.outcome, result.status_code) == (PushOutcome.GONE, status)
    assert push_service.delivered == []
    result.raise_for_transient()  # not transient: nothing to retry


def test_429_with_retry_after_is_transient_then_delivered(push_service: PushService) -> None:
    subscription = push_service.subscribe(Answer(429, retry_after="17"), Answer(201))

    first = send(subscription, "once")
    second = send(subscription, "once")

    assert (first.outcome, first.status_code, first.retry_after_s) == (
        PushOutcome.TRANSIENT,
        429,
        17.0,
    )
    with pytest.raises(PushTransient) as raised:
        first.raise_for_transient()
    assert raised.value.retry_after_s == 17.0
    assert second.outcome is PushOutcome.DELIVERED
    assert [p.payload for p in push_service.delivered_to(subscription)] == [b"once"]


def test_retry_after_as_an_http_date(push_service: PushService) -> None:
    subscription = push_service.subscribe(Answer(503, retry_after="Fri, 01 Jan 2100 00:00:00 GMT"))

    result = send(subscription)

    assert result.outcome is PushOutcome.TRANSIENT
    assert result.retry_after_s is not None and result.retry_after_s > 365 * 24 * 3600


def test_500_is_transient_every_time(push_service: PushService) -> None:
    subscription = push_service.subscribe(500)

    results = [send(subscription) for _ in range(3)]

    assert {(r.outcome, r.status_code, r.retry_after_s) for r in results} == {
        (PushOutcome.TRANSIENT, 500, None)
    }
    assert push_service.delivered == []


@pytest.mark.parametrize("status", [400, 401, 413])
def test_other_4xx_fail_without_retry(push_service: PushService, status: int) -> None:
    subscription = push_service.subscribe(status)

    result = send(subscription)

    assert (result.outcome, result.status_code) == (PushOutcome.FAILED, status)


def test_a_push_service_that_does_not_answer_is_transient(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    push_service.stop()

    result = send(subscription)

    assert (result.outcome, result.status_code) == (PushOutcome.TRANSIENT, None)
    assert "Connection" in result.detail or "Error" in result.detail


def test_broken_subscription_keys_fail_without_a_request(push_service: PushService) -> None:
    subscription = push_service.subscribe()

    result = push_send(
        endpoint=subscription.endpoint, p256dh="A" * 87, auth=subscription.auth, payload="x"
    )

    assert (result.outcome, result.status_code) == (PushOutcome.FAILED, None)
    assert push_service.attempts == []


def test_one_connection_per_origin_is_reused(push_service: PushService) -> None:
    subscriptions = push_service.subscribe_many(5)

    for subscription in subscriptions * 2:
        send(subscription)

    assert len(push_service.delivered) == 10
    assert len({p.connection for p in push_service.delivered}) == 1


def test_a_forked_child_opens_its_own_connection(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    send(subscription, "parent before")

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code only
        try:
            ok = send(subscription, "child").outcome is PushOutcome.DELIVERED
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    send(subscription, "parent after")

    pushes = {p.payload: p.connection for p in push_service.delivered_to(subscription)}
    assert pushes[b"parent before"] == pushes[b"parent after"]
    assert pushes[b"child"] != pushes[b"parent before"]


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_run_inside_a_transaction(push_service: PushService) -> None:
    subscription = push_service.subscribe()

    with pytest.raises(RuntimeError, match="transaction"), transaction.atomic():
        send(subscription)

    assert push_service.attempts == []
    assert send(subscription).outcome is PushOutcome.DELIVERED  # after the commit: fine


def test_missing_vapid_settings_are_a_configuration_error(
    push_service: PushService, settings: Any
) -> None:
    settings.VAPID_PRIVATE_KEY = ""

    with pytest.raises(ImproperlyConfigured):
        send(push_service.subscribe())


@pytest.mark.parametrize(
    "options",
    [
        {"ttl_s": -1},
        {"ttl_s": sender.MAX_TTL_S + 1},
        {"ttl_s": "60"},
        {"urgency": "urgent"},
        {"topic": "has space"},
        {"topic": "x" * 33},
    ],
)
def test_bad_arguments_are_refused_before_sending(
    push_service: PushService, options: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        send(push_service.subscribe(), **options)
    assert push_service.attempts == []


def test_only_http_and_https_endpoints(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    with pytest.raises(ValueError):
        push_send(
            endpoint="ftp://127.0.0.1/push/x",
            p256dh=subscription.p256dh,
            auth=subscription.auth,
            payload=json.dumps({}),
        )


def test_endpoint_origin_is_the_vapid_audience() -> None:
    assert sender.endpoint_origin("https://FCM.googleapis.com:443/fcm/send/x") == (
        "https://fcm.googleapis.com"
    )
    assert sender.endpoint_origin("http://127.0.0.1:8123/push/x") == "http://127.0.0.1:8123"
    assert sender.endpoint_origin("http://[::1]:8123/push/x") == "http://[::1]:8123"
