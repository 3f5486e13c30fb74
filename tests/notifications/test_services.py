"""notify_user / notify_users, preferences, read marks and the broadcast fan-out, against
the real PostgreSQL and the real channels_redis layer (the session's private Redis)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from apps.notifications import kinds, selectors, services
from apps.notifications.models import Broadcast, Notification, Topic, TopicSubscription
from apps.notifications.services import Notice
from tasks.errors import IllegalTransition
from tasks.models import OutboxMessage


@pytest.fixture
def ann(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ann", password="pw")


def _listen(user_id: int) -> str:
    channel = f"notif-test.{uuid.uuid4().hex}"
    async_to_sync(get_channel_layer().group_add)(services.user_group(user_id), channel)
    return channel


def _receive(channel: str, timeout: float) -> dict[str, Any] | None:
    async def receive() -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)
        except TimeoutError:
            return None

    return async_to_sync(receive)()


def _notify(user_id: int, key: str = "order:1:confirmed", kind: str = kinds.ORDER_CONFIRMED) -> Any:
    return services.notify_user(
        user_id=user_id, kind=kind, title="Order 1 confirmed", body="b", url="/o", source_key=key
    )


@pytest.mark.django_db
def test_one_source_key_notifies_once(ann: Any) -> None:
    first = _notify(ann.pk)
    assert first is not None
    assert _notify(ann.pk) is None  # a retried caller
    assert Notification.objects.filter(user=ann).count() == 1
    stored = Notification.objects.get()
    assert (stored.kind, stored.title, stored.body, stored.url, stored.source_key) == (
        kinds.ORDER_CONFIRMED,
        "Order 1 confirmed",
        "b",
        "/o",
        "order:1:confirmed",
    )
    assert _notify(ann.pk, key="order:1:failed") is not None  # another source
    assert Notification.objects.filter(user=ann).count() == 2


@pytest.mark.django_db
def test_a_notice_needs_a_source_key(ann: Any) -> None:
    with pytest.raises(ValueError):
        _notify(ann.pk, key="")
    assert not Notification.objects.exists()


@pytest.mark.django_db
def test_in_app_off_keeps_the_kind_out_of_the_inbox_unless_critical(ann: Any) -> None:
    services.preferences_set(
        user_id=ann.pk,
        changes={kinds.ORDER_CONFIRMED: {"in_app": False}, kinds.ORDER_FAILED: {"in_app": False}},
    )
    assert _notify(ann.pk) is None
    assert _notify(ann.pk, key="order:1:failed", kind=kinds.ORDER_FAILED) is not None
    assert list(Notification.objects.values_list("kind", flat=True)) == [kinds.ORDER_FAILED]
    prefs = selectors.preferences_get(user_id=ann.pk)
    assert prefs[kinds.ORDER_CONFIRMED] == {"in_app": False, "web_push": True, "email": False}
    assert prefs[kinds.COUPON_ISSUED] == kinds.DEFAULT_CHANNELS


@pytest.mark.django_db
def test_bad_preferences_change_nothing(ann: Any) -> None:
    from apps.core.errors import SurgeError

    for bad in (
        {"no.such.kind": {"in_app": False}},
        {kinds.ORDER_CONFIRMED: {"sms": True}},
        {kinds.ORDER_CONFIRMED: {"in_app": "no"}},
        {kinds.ORDER_CONFIRMED: True},
        [1],
        {kinds.COUPON_ISSUED: {"in_app": False}, "bogus": {}},
    ):
        with pytest.raises(SurgeError) as raised:
            services.preferences_set(user_id=ann.pk, changes=bad)
        assert raised.value.code == "invalid"
    assert selectors.preferences_get(user_id=ann.pk)[kinds.COUPON_ISSUED] == kinds.DEFAULT_CHANNELS


@pytest.mark.django_db
def test_the_bulk_form_is_one_statement(
    django_user_model: Any, django_assert_num_queries: Any
) -> None:
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"bulk{i}") for i in range(2000)]
    )
    notices = [
        Notice(user_id=u.pk, title=f"Coupon {u.pk}", source_key=f"coupon:{u.pk}") for u in users
    ]
    with django_assert_num_queries(3):  # savepoint, the INSERT, release
        made = services.notify_users(kind=kinds.COUPON_ISSUED, notices=notices)
    assert len(made) == 2000
    assert [n.user_id for n in made] == [u.pk for u in users]
    assert services.notify_users(kind=kinds.COUPON_ISSUED, notices=notices) == []
    assert Notification.objects.count() == 2000


@pytest.mark.django_db(transaction=True)
def test_the_live_event_goes_after_the_commit_and_never_on_rollback(ann: Any) -> None:
    channel = _listen(ann.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        _notify(ann.pk, key="order:9:confirmed")
        raise RuntimeError("the caller's write fails")
    assert not Notification.objects.exists()
    assert _receive(channel, 0.5) is None

    with transaction.atomic():
        made = _notify(ann.pk)
        assert _receive(channel, 0.3) is None, "sent before the commit"
    event = _receive(channel, 5)
    assert event is not None
    assert event["type"] == "notification.created"
    assert event["notification"]["id"] == made.pk
    assert event["notification"]["title"] == "Order 1 confirmed"


@pytest.mark.django_db
def test_mark_read_is_per_user(ann: Any, django_user_model: Any) -> None:
    from apps.core.errors import SurgeError

    bob = django_user_model.objects.create_user("bob", password="pw")
    mine = _notify(ann.pk)
    with pytest.raises(SurgeError) as raised:
        services.notification_mark_read(notification_id=mine.pk, user_id=bob.pk)
    assert raised.value.status == 404
    read = services.notification_mark_read(notification_id=mine.pk, user_id=ann.pk)
    assert read.read_at is not None
    again = services.notification_mark_read(notification_id=mine.pk, user_id=ann.pk)
    assert again.read_at == read.read_at
    _notify(ann.pk, key="a")
    _notify(ann.pk, key="b")
    assert selectors.unread_count(user_id=ann.pk) == 2
    assert services.notifications_mark_all_read(user_id=ann.pk) == 2
    assert selectors.unread_count(user_id=ann.pk) == 0


# --- Broadcasts ------------------------------------------------------------------------------


def _subscribers(django_user_model: Any, topic_slug: str, n: int) -> list[Any]:
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"sub-{topic_slug}-{i}") for i in range(n)]
    )
    for user in users:
        services.topic_subscribe(user_id=user.pk, slug=topic_slug)
    return users


@pytest.mark.django_db
def test_a_broadcast_fans_out_in_keyset_batches_once_per_user(django_user_model: Any) -> None:
    users = _subscribers(django_user_model, "news", 25)
    Topic.objects.create(slug="other")
    services.topic_subscribe(user_id=users[0].pk, slug="other")
    broadcast = services.broadcast_create(
        topic_slug="news", title="Hello", body="world", created_by_id=None
    )
    assert OutboxMessage.objects.filter(task_name=services.BROADCAST_FANOUT_TASK).count() == 1
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 10
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.recipients) == ("sending", 10)
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 10
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 5
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.recipients) == ("done", 25)
    assert broadcast.finished_at is not None
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 0
    rows = Notification.objects.filter(broadcast=broadcast)
    assert sorted(rows.values_list("user_id", flat=True)) == sorted(u.pk for u in users)
    assert set(rows.values_list("kind", "title", "body")) == {(kinds.BROADCAST, "Hello", "world")}
    # One successor message per batch, keyed by where it starts.
    assert OutboxMessage.objects.filter(task_name=services.BROADCAST_FANOUT_TASK).count() == 3


@pytest.mark.django_db
def test_a_retried_batch_inserts_nothing_twice(django_user_model: Any) -> None:
    _subscribers(django_user_model, "news", 12)
    broadcast = services.broadcast_create(topic_slug="news", title="Hi", created_by_id=None)
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 10
    # As if the batch's effect was seen again from the start (a replay from before it).
    Broadcast.objects.filter(pk=broadcast.pk).update(last_user_id=0)
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 0
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk, batch_size=10) == 2
    assert Notification.objects.filter(broadcast=broadcast).count() == 12
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.recipients) == ("done", 12)


@pytest.mark.django_db
def test_an_empty_topic_is_done_at_once_and_done_has_no_way_out() -> None:
    Topic.objects.create(slug="quiet")
    broadcast = services.broadcast_create(topic_slug="quiet", title="Hi", created_by_id=None)
    assert services.broadcast_fanout_batch(broadcast_id=broadcast.pk) == 0
    broadcast.refresh_from_db()
    assert (broadcast.status, broadcast.recipients) == ("done", 0)
    with pytest.raises(IllegalTransition):
        services.BROADCAST_MACHINE.check("done", "sending")
    with pytest.raises(IllegalTransition):
        services.BROADCAST_MACHINE.check("sending", "queued")
    assert services.BROADCAST_MACHINE.terminal == {"done"}


@pytest.mark.django_db
def test_subscribing_twice_is_one_subscription(ann: Any) -> None:
    services.topic_subscribe(user_id=ann.pk, slug="fresh-topic")
    services.topic_subscribe(user_id=ann.pk, slug="fresh-topic")
    assert TopicSubscription.objects.filter(user=ann, topic__slug="fresh-topic").count() == 1
    services.topic_unsubscribe(user_id=ann.pk, slug="fresh-topic")
    services.topic_unsubscribe(user_id=ann.pk, slug="fresh-topic")
    assert not TopicSubscription.objects.exists()
    assert Topic.objects.filter(slug="fresh-topic").exists()
