from __future__ import annotations

from django.db import models


class IdempotencyRecord(models.Model):
    """The first answer to a POST sent with an `Idempotency-Key`, kept for replay.

    `scope` is the caller ("u:<user id>", or "anon" for unauthenticated endpoints): keys
    are per user. The fingerprint is a hash of method, path and body, so a reused key with
    a different request is told apart from an honest retry.
    """

    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    content_type = models.CharField(max_length=100)
    body = models.BinaryField()
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.scope}/{self.key} -> {self.status_code}"
