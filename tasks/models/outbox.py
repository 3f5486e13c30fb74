"""Tables of the transactional outbox and of idempotent consumers."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

__all__ = ["OutboxEpoch", "OutboxMessage", "ProcessedMessage"]


class OutboxMessage(models.Model):
    """A task to publish once the transaction that wrote this row commits.

    Life of a row: pending (`sent_at` null) -> sent (published, `broker_epoch` says into
    which life of the broker) -> done (`done_at`: the worker finished with it, for good).
    Rows stay "in flight" until done, so the sweeper can publish again whatever a crash or
    a loss of the broker's data may have swallowed; consumers are idempotent, so a second
    publication is harmless, a lost one is not.
    """

    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    # Empty: the task's own route (or the default queue).
    queue = models.CharField(max_length=50, blank=True, default="")
    # Optional dedupe key: enqueueing an existing key does nothing. NULL, not "", for "no
    # key": the unique constraint must let any number of keyless rows through.
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    # The logical id consumers dedupe on; empty means "outbox-<id>". A replayed dead letter
    # carries the id of the message it replays, so an effect that did happen stays done.
    message_id = models.CharField(max_length=200, blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    # Times come from the database's clock: hosts' clocks may disagree, PostgreSQL's is one.
    created_at = models.DateTimeField(db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    broker_epoch = models.BigIntegerField(default=0)
    publish_count = models.PositiveIntegerField(default=0)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # NULLs are distinct: rows without a key never collide.
            models.UniqueConstraint(fields=["key"], name="tasks_outbox_key_unique"),
        ]
        indexes = [
            # Small partial indexes, one per question the sweeper and the pruner ask, so
            # none of them walks the history of sent rows.
            models.Index(
                fields=["created_at"], name="tasks_outbox_unsent", condition=Q(sent_at__isnull=True)
            ),
            models.Index(
                fields=["broker_epoch"],
                name="tasks_outbox_inflight_epoch",
                condition=Q(done_at__isnull=True, sent_at__isnull=False),
            ),
            models.Index(
                fields=["sent_at"],
                name="tasks_outbox_inflight_sent",
                condition=Q(done_at__isnull=True),
            ),
            models.Index(
                fields=["done_at"], name="tasks_outbox_done", condition=Q(done_at__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"outbox {self.pk} {self.task_name}"

    @property
    def logical_message_id(self) -> str:
        return self.message_id or f"outbox-{self.pk}"

    @property
    def status(self) -> str:
        if self.done_at is not None:
            return "done"
        return "sent" if self.sent_at is not None else "pending"


class OutboxEpoch(models.Model):
    """One row per life of the broker's data (a Redis restart without persistence, a
    failover to a replica that lagged, a flush). Ids only grow, so "published in an older
    epoch and not done" means "the message may be gone": see tasks/outbox/."""

    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"broker epoch {self.pk}"


class ProcessedMessage(models.Model):
    """`consumer` has applied the effect of message `message_id` (written in the same
    transaction as the effect, so the two commit or vanish together)."""

    consumer = models.CharField(max_length=100)
    message_id = models.CharField(max_length=200)
    processed_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "message_id"], name="tasks_processed_message_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer}: {self.message_id}"
