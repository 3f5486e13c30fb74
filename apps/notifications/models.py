"""The inbox, topics, preferences, Web Push subscriptions and broadcasts.

The database keeps the "once" rules: one inbox row per (user, source_key) so a retried
caller notifies once, and one per (broadcast, user) so a retried fan-out batch inserts
nothing twice. `created_at` has a database default because the bulk paths insert with SQL.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from .kinds import DEFAULT_CHANNELS

TOPIC_SLUG_PATTERN = r"^[a-z0-9-]{1,64}$"


class Topic(models.Model):
    slug = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(slug__regex=TOPIC_SLUG_PATTERN), name="topic_slug_format"
            )
        ]

    def __str__(self) -> str:
        return self.slug


class TopicSubscription(models.Model):
    # No index of its own on the topic: the unique (topic, user) index starts with it, and
    # it is also what a broadcast's keyset batches walk (topic = ? AND user_id > ?).
    topic = models.ForeignKey(
        Topic, on_delete=models.CASCADE, related_name="subscriptions", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="topic_subscriptions"
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "user"], name="topic_subscription_once")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.topic_id}"


class NotificationPreference(models.Model):
    """A user's channels for one kind. No row: `kinds.DEFAULT_CHANNELS`. Critical kinds
    (`kinds.CRITICAL_KINDS`) ignore it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="notification_preferences",
        db_index=False,
    )
    kind = models.CharField(max_length=64)
    in_app = models.BooleanField(default=DEFAULT_CHANNELS["in_app"])
    web_push = models.BooleanField(default=DEFAULT_CHANNELS["web_push"])
    email = models.BooleanField(default=DEFAULT_CHANNELS["email"])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "kind"], name="notification_preference_once")
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.kind}"


class Broadcast(models.Model):
    """One message to every subscriber of a topic, fanned out in keyset batches of
    subscribers (`last_user_id` is where the next batch starts)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENDING = "sending"
        DONE = "done"

    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="broadcasts")
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Inbox rows written (users). Web Push deliveries (subscriptions): created with the
    # inbox rows, and how they ended: delivered, failed for good, or gone (the subscription
    # expired). `done` needs the fan-out finished (`fanned_out_at`) and every delivery
    # ended: delivered + failed + gone == deliveries.
    recipients = models.PositiveIntegerField(default=0)
    deliveries = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    gone = models.PositiveIntegerField(default=0)
    last_user_id = models.BigIntegerField(default=0)
    fanned_out_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"broadcast {self.pk} to {self.topic_id} ({self.status})"


class Notification(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="notifications",
        db_index=False,  # the inbox index starts with the user
    )
    kind = models.CharField(max_length=64)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    # What caused it, e.g. "coupon:42": the same source notifies a user once.
    source_key = models.CharField(max_length=200, blank=True)
    broadcast = models.ForeignKey(
        Broadcast,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        db_index=False,  # the unique (broadcast, user) index starts with it
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "source_key"],
                condition=~Q(source_key=""),
                name="notification_once_per_source",
            ),
            models.UniqueConstraint(
                fields=["broadcast", "user"],
                condition=Q(broadcast__isnull=False),
                name="notification_once_per_broadcast",
            ),
        ]
        indexes = [
            # The inbox (newest first), `after_id` catch-up and resume.
            models.Index(fields=["user", "id"], name="notification_inbox"),
            # Unread lists and `unread_count`: only the unread rows, usually few.
            models.Index(
                fields=["user", "id"], condition=Q(read_at__isnull=True), name="notification_unread"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.user_id}: {self.title}"


class WebPushSubscription(models.Model):
    """A browser's push subscription (RFC 8030 endpoint, RFC 8291 keys). The endpoint is
    unique: the same browser registering again moves it to whoever registered last."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webpush_subscriptions"
    )
    endpoint = models.TextField()
    p256dh = models.CharField(max_length=128)  # base64url, 65-byte uncompressed P-256 point
    auth = models.CharField(max_length=64)  # base64url, 16 bytes
    user_agent = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    failure_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["endpoint"], name="webpush_endpoint_unique")]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.endpoint[:60]}"


class WebPushDelivery(models.Model):
    """One inbox row to push to one subscription: the durable record of the work (the
    webpush drain claims pending rows in batches, sends outside any transaction, records
    the outcome). Unique per (notification, subscription): a retried fan-out batch creates
    nothing twice.

    `claimed_until` is set while a worker holds the row (between the claim's commit and the
    outcome's): a row claimed and never recorded (its worker died) is looked at again only
    after it; `next_attempt_at` is when it is due (now, a backoff, or the claim's end).
    The subscription goes NULL when it is deleted: a delivery still pending then ends gone.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"
        GONE = "gone"

    notification = models.ForeignKey(
        Notification,
        on_delete=models.CASCADE,
        related_name="webpush_deliveries",
        db_index=False,  # the unique (notification, subscription) index starts with it
    )
    subscription = models.ForeignKey(
        WebPushSubscription,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
    )
    # The notification's broadcast, copied so outcomes are counted per broadcast without a
    # join; NULL for a notify_user notification.
    broadcast = models.ForeignKey(
        Broadcast, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_default=Now())
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "subscription"], name="webpush_delivery_once"
            )
        ]
        indexes = [
            # The claim: due pending rows, oldest first; only pending rows are in it.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(status="pending"),
                name="webpush_delivery_due",
            ),
        ]

    def __str__(self) -> str:
        return f"push of {self.notification_id} to {self.subscription_id} ({self.status})"
