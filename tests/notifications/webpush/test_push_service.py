"""The test push service itself: it must refuse what a real push service or browser would,
or the sender's tests would prove nothing. Pushes are built by hand here (http_ece and
py_vapid directly), not with the sender."""

from __future__ import annotations

import time
from typing import Any

import http_ece  # type: ignore[import-untyped]
import pytest
import urllib3
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import jwt as vapid_jwt  # type: ignore[import-untyped]

from apps.notifications.webpush.keys import b64url_decode, vapid_keys_generate

from .push_service import PushService, TestSubscription

KEYS = vapid_keys_generate()
SIGNING_KEY = ec.derive_private_key(int.from_bytes(b64url_decode(KEYS.private_key)), ec.SECP256R1())


def authorization(service: PushService, **claims: Any) -> str:
    claims = {
        "aud": service.origin,
        "exp": int(time.time()) + 3600,
        "sub": "mailto:a@b.example",
    } | claims
    return f"vapid t={vapid_jwt.sign(claims, SIGNING_KEY)}, k={KEYS.public_key}"


def encrypted(subscription: TestSubscription, data: bytes = b"hi") -> bytes:
    return http_ece.encrypt(
        data,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=b64url_decode(subscription.p256dh),
        auth_secret=subscription.auth_secret,
        version="aes128gcm",
    )


def post(endpoint: str, body: bytes, **headers: str) -> int:
    response = urllib3.request("POST", endpoint, body=body, headers=headers, retries=False)
    return response.status


def valid_headers(service: PushService) -> dict[str, str]:
    return {
        "Authorization": authorization(service),
        "TTL": "60",
        "Content-Encoding": "aes128gcm",
    }


def test_a_valid_push_is_decrypted_and_recorded(push_service: PushService) -> None:
    subscription = push_service.subscribe()

    status = post(
        subscription.endpoint, encrypted(subscription, b"payload"), **valid_headers(push_service)
    )

    assert status == 201
    assert [p.payload for p in push_service.delivered_to(subscription)] == [b"payload"]
    assert push_service.rejections == []


def _tampered(service: PushService) -> str:
    """A valid header with the signature's first character changed."""
    token = authorization(service).removeprefix("vapid t=").split(",")[0]
    header, claims, signature = token.split(".")
    signature = ("B" if signature[0] == "A" else "A") + signature[1:]
    return f"vapid t={header}.{claims}.{signature}, k={KEYS.public_key}"


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"Authorization": None}, 401, "no Authorization"),
        ({"Authorization": "WebPush abc"}, 401, "not vapid"),
        ({"Authorization": _tampered}, 401, "does not verify"),
        ({"Authorization": lambda s: authorization(s, aud="https://other.example")}, 401, "aud"),
        ({"Authorization": lambda s: authorization(s, exp=int(time.time()) - 1)}, 401, "exp"),
        (
            {"Authorization": lambda s: authorization(s, exp=int(time.time()) + 25 * 3600)},
            401,
            "exp",
        ),
        ({"Authorization": lambda s: authorization(s, sub="admin")}, 401, "sub"),
        ({"TTL": None}, 400, "TTL"),
        ({"TTL": "-5"}, 400, "TTL"),
        ({"Content-Encoding": "aesgcm"}, 400, "aes128gcm"),
    ],
)
def test_what_a_push_service_refuses_is_refused(
    push_service: PushService, change: dict[str, Any], status: int, reason: str
) -> None:
    subscription = push_service.subscribe()
    headers = valid_headers(push_service)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value(push_service) if callable(value) else value

    assert post(subscription.endpoint, encrypted(subscription), **headers) == status

    assert push_service.delivered == []
    [rejection] = push_service.rejections
    assert reason in rejection.reason


def test_a_payload_encrypted_for_another_subscription_does_not_decrypt(
    push_service: PushService,
) -> None:
    subscription, other = push_service.subscribe(), push_service.subscribe()

    status = post(subscription.endpoint, encrypted(other), **valid_headers(push_service))

    assert status == 400
    assert "decrypt" in push_service.rejections[0].reason


def test_a_push_signed_with_another_key_than_subscribed_with_is_403(
    push_service: PushService,
) -> None:
    subscription = push_service.subscribe(application_server_key=vapid_keys_generate().public_key)

    assert (
        post(subscription.endpoint, encrypted(subscription), **valid_headers(push_service)) == 403
    )


def test_an_unknown_endpoint_is_404(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    endpoint = subscription.endpoint + "x"

    assert post(endpoint, encrypted(subscription), **valid_headers(push_service)) == 404


def test_unsubscribe_makes_the_endpoint_answer_410(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    push_service.unsubscribe(subscription)

    assert (
        post(subscription.endpoint, encrypted(subscription), **valid_headers(push_service)) == 410
    )
    assert push_service.delivered == []
