"""Rows the demo saga acts on, so tests can count every effect exactly."""

from __future__ import annotations

from django.db import models

__all__ = ["SagaEffect", "SagaLedger", "SagaSwitch"]


class SagaLedger(models.Model):
    """What the demo saga's steps change: each forward step adds, each compensation undoes."""

    name = models.CharField(max_length=100)
    reserved = models.IntegerField(default=0)
    charged = models.IntegerField(default=0)
    confirmed = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"ledger {self.pk}: reserved={self.reserved} charged={self.charged}"


class SagaSwitch(models.Model):
    """A flag a test flips to release a held step or let a failing compensation succeed."""

    name = models.CharField(max_length=100, unique=True)
    on = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.name}={'on' if self.on else 'off'}"


class SagaEffect(models.Model):
    """One committed effect of a step or compensation (no unique key: a double run shows)."""

    ledger = models.ForeignKey(SagaLedger, on_delete=models.CASCADE, related_name="effects")
    saga_id = models.BigIntegerField()
    step = models.CharField(max_length=100)
    direction = models.CharField(max_length=16)
    attempt = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"saga {self.saga_id} {self.direction} {self.step} attempt {self.attempt}"
