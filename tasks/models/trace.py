"""One row per event of a flow, keyed by the request id that started it."""

from __future__ import annotations

from django.db import models

__all__ = ["TraceEvent"]


class TraceEvent(models.Model):
    request_id = models.CharField(max_length=128)
    at = models.DateTimeField()
    kind = models.CharField(max_length=40)  # "http.request", "task.started", "saga.step", …
    name = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["request_id", "at"], name="trace_request_at"),
            models.Index(fields=["at"], name="trace_at"),
        ]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S.%f} {self.kind} {self.name}"
