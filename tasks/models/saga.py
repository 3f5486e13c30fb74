"""A saga is a row plus one row per forward step and per compensation that ran or will run.

The engine (tasks/saga/) is the only writer; the status tables live there too.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

__all__ = ["Saga", "SagaStatus", "SagaStep", "StepDirection", "StepStatus"]


class SagaStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATION_FAILED = "compensation_failed"


# Statuses in which a runner has work to do (the sweeper and the lease look only at these).
RUNNABLE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class StepDirection(models.TextChoices):
    FORWARD = "forward"
    COMPENSATION = "compensation"


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class Saga(models.Model):
    """One run of a registered saga definition (`kind`) for one app object (`ref`)."""

    kind = models.CharField(max_length=100)
    # The app's handle on its saga, e.g. "order:42": unique per kind when set.
    ref = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=24, choices=SagaStatus.choices, default="pending")
    context = models.JSONField(default=dict, blank=True)
    current_step = models.PositiveSmallIntegerField(default=0)
    request_id = models.CharField(max_length=128, blank=True)
    # Stable code the app maps to its own failure codes ("<step>_retries_exhausted", …).
    failure_reason = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    needs_attention = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    # Single-runner guarantee: a runner owns the saga while `lease_until` is in the future.
    lease_token = models.CharField(max_length=32, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When the sweeper should run the saga if no message has (retry due, lost message).
    wake_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "ref"], condition=~Q(ref=""), name="tasks_saga_kind_ref_uniq"
            ),
            models.CheckConstraint(
                condition=Q(status__in=SagaStatus.values), name="tasks_saga_status_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["wake_at"],
                condition=Q(status__in=RUNNABLE),
                name="tasks_saga_wake_idx",
            ),
            models.Index(fields=["status", "-created_at"], name="tasks_saga_status_idx"),
            models.Index(fields=["request_id"], name="tasks_saga_request_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.ref or '-'}) {self.status}"


class SagaStep(models.Model):
    """One forward step or one compensation of a saga, with every attempt counted.

    Forward rows are written when the saga starts; compensation rows when it starts to
    compensate (one per succeeded step that has a compensation), so rows ordered by id read
    as the saga's timeline.
    """

    saga = models.ForeignKey(Saga, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    direction = models.CharField(max_length=16, choices=StepDirection.choices)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default="pending")
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the row last changed status: the time an API shows next to it.
    at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["saga", "direction", "index"], name="tasks_sagastep_once_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.index} {self.name}: {self.status}"
