"""Fixtures for Web Push tests: the test push service and a VAPID key pair in settings.

Reusable by any test under tests/notifications/ (the broadcast's live tests too): the
push service runs in this process, and worker processes post to its endpoints over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apps.notifications.webpush.keys import VapidKeyPair, vapid_keys_generate

from .push_service import PushService

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
