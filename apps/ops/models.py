from __future__ import annotations

from django.conf import settings
from django.db import models


class Ping(models.Model):
    """A diagnostic round trip: accepted over HTTP, answered by a worker.

    It proves the whole path (request id, transaction, broker, worker) with nothing of a
    use case in it, and the tests lean on it.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    message = models.CharField(max_length=200, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ponged_at = models.DateTimeField(null=True, blank=True)
    pong_request_id = models.CharField(max_length=128, blank=True)

    def __str__(self) -> str:
        return f"ping {self.pk}"
