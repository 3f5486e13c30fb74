"""Broadcasts pushed by real Celery workers to the test push service, which decrypts each
push (RFC 8291) and checks its VAPID JWT against the key the browser subscribed with (a
push signed with any other key is refused 403 and would show as failed).

The workers get this test's VAPID pair and the fast delivery knobs in their environment
(`webpush_env`). Beat is not running: where a beat job would fire (the Web Push and outbox
sweeps, every 2 s), the test sends it as beat does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from apps.notifications import services
from apps.notifications.models import (
    Broadcast,
    Notification,
    Topic,
    TopicSubscription,
    WebPushDelivery,
    WebPushSubscription,
)
from apps.notifications.services.deliveries import DRAIN
from config.celery import app as celery_app

from ..harness import LiveProcess
from .conftest import store_subscriptions
from .webpush.push_service import Answer, PushService, TestSubscription

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# 2,000 subscribers (the figure): fan-out and pushes take about ten seconds here.
BIG_N = 2000


@pytest.fixture
def push_workers(
    request: pytest.FixtureRequest,
    worker_pool: Callable[..., list[LiveProcess]],
    webpush_env: dict[str, str],
) -> Callable[[int], list[LiveProcess]]:
    """`push_workers(n)`: n workers with this test's VAPID pair and knobs. The session's
    worker (other keys, production knobs) is stopped first so it takes none of this
    test's work; `live_worker` starts it again for the tests that need it."""
    request.getfixturevalue("_session_worker").stop()
    DRAIN.clear()

    def start(n: int = 1) -> list[LiveProcess]:
        return worker_pool(n, concurrency=2, env=webpush_env)

    return start


def _subscribers(
    django_user_model: Any,
    push_service: PushService,
    vapid_keys: Any,
    answers: list[tuple[Answer, ...]],
    slug: str = "news",
) -> tuple[Topic, list[Any], list[TestSubscription]]:
    """One user per entry of `answers`, subscribed to the topic, with one browser whose
    push service answers so."""
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"{slug}{i}") for i in range(len(answers))]
    )
    browsers = [
        push_service.subscribe(*scripted, application_server_key=vapid_keys.public_key)
        for scripted in answers
    ]
    store_subscriptions([u.pk for u in users], browsers)
    topic = Topic.objects.create(slug=slug)
    TopicSubscription.objects.bulk_create([TopicSubscription(topic=topic, user=u) for u in users])
    return topic, users, browsers


def _wait_done(broadcast_id: int, timeout: float) -> Broadcast:
    """Until the broadcast is done, sending beat's sweeps every 2 s meanwhile."""
    deadline = time.monotonic() + timeout
    next_sweep = time.monotonic() + 2
    while True:
        broadcast = Broadcast.objects.get(pk=broadcast_id)
        if broadcast.status == Broadcast.Status.DONE:
            return broadcast
        assert time.monotonic() < deadline, (
            f"not done: {broadcast.status} recipients={broadcast.recipients} "
            f"deliveries={broadcast.deliveries} delivered={broadcast.delivered} "
            f"failed={broadcast.failed} gone={broadcast.gone}"
        )
        if time.monotonic() >= next_sweep:
            celery_app.send_task("notifications.webpush_sweep", queue="high")
            celery_app.send_task("tasks.outbox_sweep", queue="high")
            next_sweep = time.monotonic() + 2
        time.sleep(0.1)


def _one_inbox_row_per_user(broadcast_id: int, users: list[Any]) -> None:
    per_user = Counter(
        Notification.objects.filter(broadcast_id=broadcast_id).values_list("user_id", flat=True)
    )
    assert per_user == Counter({u.pk: 1 for u in users})


def test_a_broadcast_gives_one_decryptable_push_per_subscription(
    push_workers: Any, push_service: PushService, vapid_keys: Any, django_user_model: Any
) -> None:
    _, users, browsers = _subscribers(
        django_user_model, push_service, vapid_keys, [(Answer(201),)] * BIG_N
    )
    push_workers(1)
    started = time.monotonic()
    broadcast = services.broadcast_create(
        topic_slug="news", title="Big news", body="Read all about it", created_by_id=None
    )
    broadcast = _wait_done(broadcast.pk, timeout=50)
    took = time.monotonic() - started
    print(f"\nbroadcast to {BIG_N} subscribers: done in {took:.1f} s")

    _one_inbox_row_per_user(broadcast.pk, users)
    by_endpoint = push_service.delivered_to(browsers)
    assert sorted(len(pushes) for pushes in by_endpoint.values()) == [1] * BIG_N
    inbox_ids = {n.user_id: n.pk for n in Notification.objects.filter(broadcast_id=broadcast.pk)}
    for user, browser in zip(users, browsers, strict=True):
        (push,) = by_endpoint[browser.endpoint]
        payload = push.json()
        assert (payload["title"], payload["body"]) == ("Big news", "Read all about it")
        assert payload["id"] == inbox_ids[user.pk]
        assert push.ttl > 0 and push.urgency == "low"
    assert not push_service.rejections
    assert (broadcast.recipients, broadcast.deliveries, broadcast.delivered) == (BIG_N,) * 3
    assert (broadcast.failed, broadcast.gone) == (0, 0)


def test_gone_retried_and_failing_subscriptions_end_as_the_push_service_answers(
    push_workers: Any, push_service: PushService, vapid_keys: Any, django_user_model: Any
) -> None:
    answers: list[tuple[Answer, ...]] = (
        [(Answer(410),)] * 10
        + [(Answer(429, retry_after="1"), Answer(201))] * 10
        + [(Answer(500),)] * 10
        + [(Answer(201),)] * 20
    )
    _, users, browsers = _subscribers(django_user_model, push_service, vapid_keys, answers)
    gone, throttled, broken, fine = browsers[:10], browsers[10:20], browsers[20:30], browsers[30:]
    push_workers(1)
    broadcast = services.broadcast_create(topic_slug="news", title="Mixed", created_by_id=None)
    broadcast = _wait_done(broadcast.pk, timeout=50)

    _one_inbox_row_per_user(broadcast.pk, users)
    assert (broadcast.deliveries, broadcast.delivered, broadcast.failed, broadcast.gone) == (
        50,
        30,
        10,
        10,
    )
    # 410: exactly those subscriptions are deleted, after one attempt each.
    remaining = set(WebPushSubscription.objects.values_list("endpoint", flat=True))
    assert remaining == {b.endpoint for b in throttled + broken + fine}
    assert all(len(push_service.attempts_to(b)) == 1 for b in gone)
    # 429 + Retry-After, then 201: delivered once, not before Retry-After.
    for browser in throttled:
        attempts = push_service.attempts_to(browser)
        assert [a.status for a in attempts] == [429, 201]
        assert len(push_service.delivered_to(browser)) == 1
    # 500 forever: the retry budget (3 attempts), then failed and counted.
    for browser in broken:
        assert [a.status for a in push_service.attempts_to(browser)] == [500, 500, 500]
    failing = WebPushSubscription.objects.filter(endpoint__in=[b.endpoint for b in broken])
    assert {s.failure_count for s in failing} == {1}
    assert all(len(push_service.delivered_to(b)) == 1 for b in fine)
    assert not push_service.rejections


def test_a_worker_sigkilled_mid_broadcast_leaves_one_row_per_user_and_at_most_one_push(
    push_workers: Any, push_service: PushService, vapid_keys: Any, django_user_model: Any
) -> None:
    n = 1000
    _, users, _ = _subscribers(django_user_model, push_service, vapid_keys, [(Answer(201),)] * n)
    (worker,) = push_workers(1)
    broadcast = services.broadcast_create(topic_slug="news", title="Kill", created_by_id=None)
    deadline = time.monotonic() + 30
    while len(push_service.delivered) < n // 5:
        assert time.monotonic() < deadline, "no pushes"
        time.sleep(0.01)
    worker.kill()  # mid-send: claims taken, some pushes sent and not recorded
    sent_before_kill = len(push_service.delivered)
    push_workers(1)  # a fresh worker carries on after the visibility timeout and leases
    broadcast = _wait_done(broadcast.pk, timeout=50)

    _one_inbox_row_per_user(broadcast.pk, users)
    per_endpoint = Counter(p.endpoint for p in push_service.delivered)
    assert max(per_endpoint.values()) == 1, "a subscription got two pushes"
    assert broadcast.deliveries == n
    assert broadcast.delivered + broadcast.failed + broadcast.gone == n
    # What was recorded delivered was received; what the push service got beyond that is
    # the dead worker's unrecorded sends, ended failed ("outcome unknown").
    assert broadcast.delivered <= len(per_endpoint) <= broadcast.delivered + broadcast.failed
    unknown = WebPushDelivery.objects.filter(last_error__contains="unknown").count()
    print(
        f"\nSIGKILL after {sent_before_kill} pushes: delivered={broadcast.delivered} "
        f"failed(unknown)={broadcast.failed} received={len(per_endpoint)}"
    )
    assert unknown == broadcast.failed
    assert not push_service.rejections
