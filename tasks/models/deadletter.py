"""Dead letters: tasks that failed for good, kept for an operator to inspect and replay."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

__all__ = ["DeadLetter"]


class DeadLetter(models.Model):
    """One task message that will not run again by itself.

    At most one row per task id (a redelivered message that fails again updates its row),
    so "exactly one dead letter per failed task" holds even when a worker dies after
    writing it. Status moves only open -> replayed or open -> discarded (tasks/deadletters.py).
    """

    class Status(models.TextChoices):
        OPEN = "open", "open"
        REPLAYED = "replayed", "replayed"
        DISCARDED = "discarded", "discarded"

    class Reason(models.TextChoices):
        RETRIES_EXHAUSTED = "retries_exhausted", "transient error, retries exhausted"
        PERMANENT = "permanent", "permanent error"
        ERROR = "error", "unexpected error (not retried)"
        REDELIVERY_CAP = "redelivery_cap", "redelivered too often (worker lost each time)"
        TIME_LIMIT = "time_limit", "hard time limit"
        UNKNOWN_TASK = "unknown_task", "no such task"
        UNPUBLISHABLE = "unpublishable", "outbox row could not be published"

    task_name = models.CharField(max_length=200)
    task_id = models.CharField(max_length=200)
    # The logical message id consumers dedupe on; a replay carries it along.
    message_id = models.CharField(max_length=200, blank=True, default="")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=50, blank=True, default="")
    reason = models.CharField(max_length=30, choices=Reason.choices)
    exception_class = models.CharField(max_length=200, blank=True, default="")
    exception_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(db_default=Now())
    last_failed_at = models.DateTimeField(db_default=Now())
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    replayed_at = models.DateTimeField(null=True, blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    # The outbox key of the replay ("deadletter-replay-<id>") and the row it wrote.
    replay_key = models.CharField(max_length=200, blank=True, default="")
    replay_outbox_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task_id"], name="tasks_deadletter_task_id_unique"),
        ]
        indexes = [
            models.Index(fields=["status", "-last_failed_at"], name="tasks_deadletter_status"),
            models.Index(fields=["task_name", "-last_failed_at"], name="tasks_deadletter_task"),
            models.Index(fields=["request_id"], name="tasks_deadletter_request"),
        ]

    def __str__(self) -> str:
        return f"dead letter {self.pk} {self.task_name} ({self.status})"
