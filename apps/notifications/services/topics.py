"""Topics and who subscribes to them: a valid slug's first subscription creates it."""

from __future__ import annotations

from django.db import IntegrityError, connection, transaction

from .. import validation
from ..models import Topic, TopicSubscription

__all__ = ["topic_create", "topic_subscribe", "topic_unsubscribe"]

_SUBSCRIPTION_TABLE = TopicSubscription._meta.db_table
_TOPIC_TABLE = Topic._meta.db_table


def topic_create(*, slug: str, name: str = "") -> Topic:
    """A new topic (staff). An invalid or taken slug is 400 `invalid`."""
    validation.check_topic_slug(slug)
    try:
        with transaction.atomic():
            return Topic.objects.create(slug=slug, name=name[:200])
    except IntegrityError:
        raise validation.invalid("slug", "A topic with this slug exists.") from None


def topic_subscribe(*, user_id: int, slug: str) -> Topic:
    """Subscribes the user (again: no change). A valid slug not seen before creates the
    topic; an invalid one is 400 `invalid` and creates nothing."""
    validation.check_topic_slug(slug)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_TOPIC_TABLE} (slug, name) VALUES (%s, '') "
                "ON CONFLICT (slug) DO NOTHING",
                [slug],
            )
        topic = Topic.objects.get(slug=slug)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_SUBSCRIPTION_TABLE} (topic_id, user_id) VALUES (%s, %s) "
                "ON CONFLICT (topic_id, user_id) DO NOTHING",
                [topic.pk, user_id],
            )
    return topic


def topic_unsubscribe(*, user_id: int, slug: str) -> None:
    """Unsubscribes the user; not subscribed (or no such topic) is already done."""
    validation.check_topic_slug(slug)
    TopicSubscription.objects.filter(topic__slug=slug, user_id=user_id).delete()
