"""Writes of the diagnostic round trip."""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.utils import timezone

from tasks.context import get_request_id
from tasks.outbox import outbox_enqueue

from .models import Ping

logger = logging.getLogger(__name__)


def ping_create(*, owner_id: int, message: str, hold_ms: int = 0) -> Ping:
    """Stores a ping and has a worker answer it once the row is committed.

    `hold_ms` keeps the transaction open that long: a diagnostic for what a slow handler
    does to concurrent requests (the idempotency tests use it). It is capped by the API.
    """
    with transaction.atomic():
        ping = Ping.objects.create(
            owner_id=owner_id, message=message, request_id=get_request_id() or ""
        )
        if hold_ms:
            time.sleep(hold_ms / 1000)
        # In the same transaction: published after commit, swept up if a crash intervenes.
        outbox_enqueue("ops.pong", args=[ping.pk])
    return ping


def ping_answer(*, ping_id: int) -> bool:
    """Marks the ping answered, once: a redelivered task changes nothing."""
    answered = Ping.objects.filter(pk=ping_id, ponged_at__isnull=True).update(
        ponged_at=timezone.now(), pong_request_id=get_request_id() or ""
    )
    if answered:
        logger.info("pong ping_id=%s", ping_id)
    else:
        logger.info("pong ping_id=%s skipped: gone or answered already", ping_id)
    return bool(answered)
