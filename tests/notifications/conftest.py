"""Fixtures for the notifications' Web Push tests: the test push service, a VAPID key pair
in settings, the delivery knobs, and (live tests) workers that share both.

The push service runs in this process; worker processes post to its endpoints over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from apps.notifications.webpush.keys import VapidKeyPair, vapid_keys_generate

from .webpush.push_service import PushService, TestSubscription

TEST_VAPID_SUBJECT = "mailto:webpush-tests@example.com"


@pytest.fixture
def push_service() -> Iterator[PushService]:
    with PushService() as service:
        yield service


@pytest.fixture
def push_service_factory() -> Iterator[Callable[[], PushService]]:
    """More push services, each its own origin (own port)."""
    started: list[PushService] = []

    def make() -> PushService:
        service = PushService().start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


@pytest.fixture
def vapid_keys(settings: Any) -> VapidKeyPair:
    """A fresh VAPID pair in settings for this test (the environment for worker processes
    is VAPID_PUBLIC_KEY / VAPID_PRIVATE_KEY / VAPID_SUBJECT with the same values)."""
    pair = vapid_keys_generate()
    settings.VAPID_PUBLIC_KEY = pair.public_key
    settings.VAPID_PRIVATE_KEY = pair.private_key
    settings.VAPID_SUBJECT = TEST_VAPID_SUBJECT
    return pair


# Delivery knobs for tests, in settings (this process) and in workers' environment: a
# claim lapses in seconds (the SIGKILL test waits it out), retries in fractions of one.
WEBPUSH_TEST_KNOBS = {
    "WEBPUSH_BATCH_SIZE": "50",
    "WEBPUSH_SEND_CONCURRENCY": "8",
    "WEBPUSH_LEASE_S": "3",
    "WEBPUSH_MAX_ATTEMPTS": "3",
    "WEBPUSH_RETRY_BASE_S": "0.2",
    "WEBPUSH_RETRY_MAX_S": "2",
}


@pytest.fixture
def webpush_knobs(settings: Any) -> dict[str, str]:
    for name, value in WEBPUSH_TEST_KNOBS.items():
        setattr(settings, name, float(value) if "." in value or name.endswith("_S") else int(value))
    return dict(WEBPUSH_TEST_KNOBS)


@pytest.fixture
def webpush_env(vapid_keys: VapidKeyPair, webpush_knobs: dict[str, str]) -> dict[str, str]:
    """The environment a worker needs to push as this test does: its VAPID pair, loopback
    push services allowed, the test knobs."""
    return {
        "VAPID_PUBLIC_KEY": vapid_keys.public_key,
        "VAPID_PRIVATE_KEY": vapid_keys.private_key,
        "VAPID_SUBJECT": TEST_VAPID_SUBJECT,
        "WEBPUSH_ALLOWED_HOSTS": "127.0.0.1,localhost",
        **webpush_knobs,
    }


def store_subscriptions(
    user_ids: Iterable[int], subscriptions: Iterable[TestSubscription]
) -> list[Any]:
    """The browsers' subscriptions stored for the users, in one statement (the API's checks
    are tested on their own, in test_api.py)."""
    from apps.notifications.models import WebPushSubscription

    return WebPushSubscription.objects.bulk_create(
        [
            WebPushSubscription(
                user_id=user_id, endpoint=sub.endpoint, p256dh=sub.p256dh, auth=sub.auth
            )
            for user_id, sub in zip(user_ids, subscriptions, strict=True)
        ]
    )
