"""Probes for the outbox, idempotent consumers, the base task and dead letters."""

from __future__ import annotations

from django.db import models

__all__ = ["ProbeDelivery", "ProbeEffect", "ProbeItem", "ProbeSwitch"]


class ProbeDelivery(models.Model):
    """One row per run of a probe task, committed before anything else the run does, so
    a test can count deliveries apart from effects."""

    token = models.CharField(max_length=64, db_index=True)
    task_id = models.CharField(max_length=200)
    message_id = models.CharField(max_length=200)
    redelivered = models.BooleanField(default=False)
    retries = models.PositiveIntegerField(default=0)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"delivery {self.token} {self.task_id}"


class ProbeEffect(models.Model):
    """The effect of a probe task. Deliberately no unique constraint: a duplicate effect
    must show up as a second row, not be hidden by the database."""

    token = models.CharField(max_length=64, db_index=True)
    message_id = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"effect {self.token}"


class ProbeSwitch(models.Model):
    """While `broken`, the probe task named by `token` fails."""

    token = models.CharField(max_length=64, unique=True)
    broken = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"switch {self.token}"


class ProbeItem(models.Model):
    """A row a task loads by id (and finds gone)."""

    name = models.CharField(max_length=64)
    touched = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.name
