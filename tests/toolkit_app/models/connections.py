"""A probe for how workers keep their database connections."""

from __future__ import annotations

from django.db import models

__all__ = ["ProbeConnection"]


class ProbeConnection(models.Model):
    """One row per run: which pool process ran it, on which PostgreSQL backend."""

    token = models.CharField(max_length=64, db_index=True)
    os_pid = models.PositiveIntegerField()
    backend_pid = models.PositiveIntegerField()
    retries = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.token} pid {self.os_pid} backend {self.backend_pid}"
