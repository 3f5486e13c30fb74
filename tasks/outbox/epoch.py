"""Broker epochs: the number of the broker's data, kept on the broker and allocated from
PostgreSQL whenever the broker has lost it (see the package docstring)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from django.db import connection
from django.db.models import Max

from config.celery import app as celery_app

from ..models import OutboxEpoch, OutboxMessage

logger = logging.getLogger(__name__)

_EPOCH_KEY = "surge:outbox:broker-epoch"
_EPOCH_CACHE_S = 1.0
_epoch_cache: tuple[int, float, int] | None = None  # (epoch, valid until, pid)


def broker_epoch(producer: Any, *, fresh: bool = False) -> int:
    """The current epoch of the broker's data; 0 when the broker is not Redis (then only
    the unconfirmed timeout covers a loss of its data).

    A cached value may be up to a second old: that can only make a stamp older than the
    truth, which costs a needless republication, never a loss (see the package docstring).
    """
    global _epoch_cache
    pid = os.getpid()
    now = time.monotonic()
    if not fresh and _epoch_cache is not None:
        epoch, valid_until, cached_pid = _epoch_cache
        if cached_pid == pid and now < valid_until:
            return epoch
    conn_or_acquire = getattr(producer.channel, "conn_or_acquire", None)
    if conn_or_acquire is None:
        return 0
    with conn_or_acquire() as client:
        raw = client.get(_EPOCH_KEY)
        if raw is None:
            # The broker lost its data (or is new): a new epoch, higher than all before.
            client.set(_EPOCH_KEY, _allocate_epoch(), nx=True)
            raw = client.get(_EPOCH_KEY)  # another process may have won the race
            logger.warning("outbox: broker epoch %s begins (broker data lost or new)", raw)
    epoch = int(raw)
    _epoch_cache = (epoch, now + _EPOCH_CACHE_S, pid)
    return epoch


def _allocate_epoch() -> int:
    """A number above every epoch handed out before, and above every stamp a row in flight
    carries: the sequence alone would restart low if the database were recreated while the
    broker kept its key (a test session, a restore), and rows stamped with the old high
    number would then never look stale. Then the sequence is moved past it."""
    allocated = OutboxEpoch.objects.create().pk
    floor = (
        OutboxMessage.objects.filter(done_at__isnull=True, sent_at__isnull=False).aggregate(
            highest=Max("broker_epoch")
        )["highest"]
        or 0
    )
    if allocated > floor:
        return int(allocated)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
            [OutboxEpoch._meta.db_table, floor + 1],
        )
    return int(floor + 1)


def outbox_broker_epoch() -> int:
    """The current epoch of the broker's data (0 if the broker is not Redis)."""
    with celery_app.producer_or_acquire() as producer:
        return broker_epoch(producer, fresh=True)
