"""Web Push delivery, one pass at a time in this process, against the real PostgreSQL and
the test push service (which decrypts every push and checks its VAPID JWT).

The drain's flag is held for each test (`held_drain`, the drain's own protocol: a wake
that finds the flag only asks the running chain for another pass), so no worker that may
be running in the session takes these deliveries: each pass here is the test's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from apps.notifications import kinds, services
from apps.notifications.models import (
    Broadcast,
    NotificationPreference,
    Topic,
    TopicSubscription,
    WebPushDelivery,
    WebPushSubscription,
)
from apps.notifications.services.deliveries import DRAIN, webpush_deliver_batch

from .conftest import store_subscriptions
from .webpush.push_service import Answer, PushService

pytestmark = pytest.mark.django_db(transaction=True)
Status = WebPushDelivery.Status


@pytest.fixture
def held_drain() -> Iterator[None]:
    DRAIN.clear()
    assert DRAIN.notify(), "the drain's flag was taken: a chain runs"
    yield
    DRAIN.clear()


@pytest.fixture
def ready(held_drain: None, vapid_keys: Any, webpush_knobs: Any) -> None:
    return None


def _users(django_user_model: Any, n: int, prefix: str = "u") -> list[Any]:
    return django_user_model.objects.bulk_create(
        [django_user_model(username=f"{prefix}{i}") for i in range(n)]
    )


def _notify(user_id: int, kind: str, source_key: str) -> None:
    services.notify_user(user_id=user_id, kind=kind, title="t", body="", source_key=source_key)


def _run_until_settled(timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while WebPushDelivery.objects.filter(status=Status.PENDING).exists():
        assert time.monotonic() < deadline, list(WebPushDelivery.objects.values())
        if not webpush_deliver_batch():
            time.sleep(0.1)


def test_a_notification_is_pushed_once_to_each_subscription(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    (ann,) = _users(django_user_model, 1)
    phone, laptop = push_service.subscribe(), push_service.subscribe()
    store_subscriptions([ann.pk, ann.pk], [phone, laptop])
    services.notify_user(
        user_id=ann.pk,
        kind=kinds.ORDER_CONFIRMED,
        title="Order 42 confirmed",
        body="On its way",
        url="/orders/42/",
        source_key="order:42:confirmed",
    )
    assert WebPushDelivery.objects.filter(status=Status.PENDING).count() == 2
    assert webpush_deliver_batch() == 2
    for browser in (phone, laptop):
        (push,) = push_service.delivered_to(browser)
        assert push.json()["title"] == "Order 42 confirmed"
        assert push.json()["body"] == "On its way"
        assert push.json()["url"] == "/orders/42/"
        # TTL always set; Urgency from the kind; an order's pushes share a Topic (a newer
        # status replaces an undelivered older one).
        assert (push.ttl, push.urgency, push.topic) == (24 * 3600, "normal", "order-42")
    assert set(WebPushDelivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}
    assert WebPushSubscription.objects.filter(last_success_at__isnull=False).count() == 2
    assert webpush_deliver_batch() == 0  # nothing more to do, nothing sent twice
    assert len(push_service.attempts) == 2
    assert not push_service.rejections


def test_preferences_decide_and_critical_kinds_bypass_them(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    (ann,) = _users(django_user_model, 1)
    store_subscriptions([ann.pk], [push_service.subscribe()])
    for kind in (kinds.ORDER_CONFIRMED, kinds.ORDER_FAILED):
        NotificationPreference.objects.create(user=ann, kind=kind, in_app=True, web_push=False)
    services.notify_user(
        user_id=ann.pk, kind=kinds.ORDER_CONFIRMED, title="t", body="", source_key="o:1"
    )
    assert not WebPushDelivery.objects.exists()
    services.notify_user(
        user_id=ann.pk, kind=kinds.ORDER_FAILED, title="t", body="", source_key="o:2"
    )
    assert WebPushDelivery.objects.count() == 1
    # A retried caller (same source key) writes no second row and no second delivery.
    services.notify_user(
        user_id=ann.pk, kind=kinds.ORDER_FAILED, title="t", body="", source_key="o:2"
    )
    assert WebPushDelivery.objects.count() == 1


def test_nothing_is_written_when_the_caller_rolls_back(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    (ann,) = _users(django_user_model, 1)
    store_subscriptions([ann.pk], [push_service.subscribe()])
    with pytest.raises(RuntimeError), transaction.atomic():
        services.notify_user(
            user_id=ann.pk, kind=kinds.COUPON_ISSUED, title="t", body="", source_key="c:1"
        )
        raise RuntimeError("the coupon batch fails")
    assert not WebPushDelivery.objects.exists()


def test_gone_deletes_exactly_that_subscription_and_ends_its_other_deliveries(
    ready: None, push_service: PushService, django_user_model: Any, settings: Any
) -> None:
    ann, bob = _users(django_user_model, 2)
    revoked, kept = push_service.subscribe(Answer(410)), push_service.subscribe()
    store_subscriptions([ann.pk, bob.pk], [revoked, kept])
    for n in range(3):
        services.notify_users(
            kind=kinds.COUPON_ISSUED,
            notices=[
                services.Notice(user_id=u.pk, title=f"c{n}", source_key=f"c:{n}:{u.pk}")
                for u in (ann, bob)
            ],
        )
    settings.WEBPUSH_BATCH_SIZE = 2  # the first pass sees one of ann's three deliveries
    _run_until_settled()
    assert list(WebPushSubscription.objects.values_list("user_id", flat=True)) == [bob.pk]
    assert len(push_service.attempts_to(revoked)) == 1, "a gone subscription is not retried"
    assert WebPushDelivery.objects.filter(status=Status.GONE).count() == 3
    assert len(push_service.delivered_to(kept)) == 3


def test_429_with_retry_after_then_201_is_delivered_once(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    (ann,) = _users(django_user_model, 1)
    browser = push_service.subscribe(Answer(429, retry_after="1"), Answer(201))
    store_subscriptions([ann.pk], [browser])
    services.notify_user(
        user_id=ann.pk, kind=kinds.COUPON_ISSUED, title="t", body="", source_key="c"
    )
    before = timezone.now()
    assert webpush_deliver_batch() == 1
    delivery = WebPushDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code, delivery.attempts) == (
        Status.PENDING,
        429,
        1,
    )
    # Retry-After (1 s) is honoured though the backoff (0.1-0.2 s) is shorter.
    assert delivery.next_attempt_at >= before + timedelta(seconds=1)
    assert webpush_deliver_batch() == 0, "retried before Retry-After"
    _run_until_settled()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (Status.DELIVERED, 2)
    assert len(push_service.delivered_to(browser)) == 1
    assert [a.status for a in push_service.attempts_to(browser)] == [429, 201]


def test_500_forever_ends_failed_after_the_retry_budget_and_is_counted(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    users = _users(django_user_model, 3)
    broken = push_service.subscribe(Answer(500))
    fine = push_service.subscribe_many(2)
    subs = store_subscriptions([u.pk for u in users], [broken, *fine])
    topic = Topic.objects.create(slug="news")
    TopicSubscription.objects.bulk_create([TopicSubscription(topic=topic, user=u) for u in users])
    broadcast = services.broadcast_create(
        topic_slug="news", title="Hello", body="World", created_by_id=None
    )
    services.broadcast_fanout_batch(broadcast_id=broadcast.pk)
    broadcast.refresh_from_db()
    # The inbox is written, the pushes are not: not done yet.
    assert (broadcast.status, broadcast.recipients, broadcast.deliveries) == ("sending", 3, 3)
    _run_until_settled()
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.delivered, broadcast.failed, broadcast.gone) == (
        "done",
        2,
        1,
        0,
    )
    assert broadcast.finished_at is not None
    assert len(push_service.attempts_to(broken)) == 3  # WEBPUSH_MAX_ATTEMPTS
    failed = WebPushSubscription.objects.get(pk=subs[0].pk)
    assert failed.failure_count == 1 and failed.last_failure_at is not None
    for browser in fine:
        (push,) = push_service.delivered_to(browser)
        assert push.json()["title"] == "Hello" and push.urgency == "low"


def test_a_claim_never_recorded_ends_failed_and_is_not_sent_again(
    ready: None, push_service: PushService, django_user_model: Any, settings: Any
) -> None:
    """At most once: a worker that died between its claim and its record may have sent
    the push; once its lease lapses, the delivery ends failed, and nothing is sent."""
    from apps.notifications.services import deliveries

    (ann,) = _users(django_user_model, 1)
    browser = push_service.subscribe()
    store_subscriptions([ann.pk], [browser])
    services.notify_user(
        user_id=ann.pk, kind=kinds.COUPON_ISSUED, title="t", body="", source_key="c"
    )
    settings.WEBPUSH_LEASE_S = 0.5
    assert len(deliveries._claim(10)) == 1  # ... and the worker dies here
    assert webpush_deliver_batch() == 0, "claimed again before the lease lapsed"
    time.sleep(0.6)
    assert webpush_deliver_batch() == 1
    delivery = WebPushDelivery.objects.get()
    assert delivery.status == Status.FAILED and "unknown" in delivery.last_error
    assert push_service.attempts == []


def test_an_unregistered_subscription_ends_its_pending_deliveries_gone(
    ready: None, push_service: PushService, django_user_model: Any
) -> None:
    users = _users(django_user_model, 1)
    browser = push_service.subscribe()
    store_subscriptions([users[0].pk], [browser])
    topic = Topic.objects.create(slug="news")
    TopicSubscription.objects.create(topic=topic, user=users[0])
    broadcast = services.broadcast_create(topic_slug="news", title="Hi", created_by_id=None)
    services.broadcast_fanout_batch(broadcast_id=broadcast.pk)
    services.webpush_subscription_unregister(user_id=users[0].pk, endpoint=browser.endpoint)
    _run_until_settled()
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.gone, broadcast.deliveries) == ("done", 1, 1)
    assert push_service.attempts == []


def test_a_broadcast_without_push_subscribers_is_done_after_its_fanout(
    ready: None, django_user_model: Any
) -> None:
    users = _users(django_user_model, 2)
    topic = Topic.objects.create(slug="quiet")
    TopicSubscription.objects.bulk_create([TopicSubscription(topic=topic, user=u) for u in users])
    broadcast = services.broadcast_create(topic_slug="quiet", title="Hi", created_by_id=None)
    services.broadcast_fanout_batch(broadcast_id=broadcast.pk)
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.recipients, broadcast.deliveries) == ("done", 2, 0)
    assert Broadcast.objects.get().fanned_out_at is not None
