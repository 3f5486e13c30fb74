"""The sweeper, which publishes again every row that may have been lost, and the pruning of
rows done long ago."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, Func, Q

from config.celery import app as celery_app

from ..models import OutboxMessage, ProcessedMessage
from .epoch import broker_epoch
from .publish import mark_sent, publish_rows

logger = logging.getLogger(__name__)


class _ClockTimestamp(Func):
    """The database's wall clock now. Ages are measured on the database's clock (one clock
    for every host), and with the statement's time rather than `now()`, which is frozen at
    the start of the sweeper's own transaction."""

    function = "clock_timestamp"
    template = "clock_timestamp()"
    output_field = DateTimeField()


def outbox_sweep(
    *,
    batch_size: int | None = None,
    max_batches: int = 20,
    unsent_after: timedelta | None = None,
    unconfirmed_after: timedelta | None = None,
) -> int:
    """Publishes again every row not done that may have been lost; returns how many.

    Invariant kept: a committed row is published again and again, until the worker marks
    it done, whenever its last publication may be lost: never published, published into a
    broker epoch that has since ended, or unconfirmed for too long. Batches are claimed
    with FOR UPDATE SKIP LOCKED: sweepers running at once share the work, none waits.
    """
    batch_size = batch_size or settings.OUTBOX_SWEEP_BATCH_SIZE
    if unsent_after is None:
        unsent_after = timedelta(seconds=settings.OUTBOX_SWEEP_UNSENT_AFTER_S)
    if unconfirmed_after is None:
        unconfirmed_after = timedelta(seconds=settings.OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S)
    published = 0
    budget = max_batches
    with celery_app.producer_or_acquire() as producer:
        epoch = broker_epoch(producer, fresh=True)
        # Each question has its own partial index (tasks/models/outbox.py).
        questions: list[tuple[Q, str]] = [
            (
                Q(
                    sent_at__isnull=True,
                    done_at__isnull=True,
                    created_at__lt=_ClockTimestamp() - unsent_after,
                ),
                "created_at",
            ),
            (Q(done_at__isnull=True, sent_at__lt=_ClockTimestamp() - unconfirmed_after), "sent_at"),
        ]
        if epoch:
            stale = Q(done_at__isnull=True, sent_at__isnull=False, broker_epoch__lt=epoch)
            questions.insert(1, (stale, "broker_epoch"))
        for due, order in questions:
            while budget > 0:
                budget -= 1
                claimed = _sweep_batch(producer, due, order, epoch, batch_size)
                published += claimed
                if claimed < batch_size:
                    break
    if published:
        logger.info("outbox sweep published %d rows again (broker epoch %s)", published, epoch)
    return published


def _sweep_batch(producer: Any, due: Q, order: str, epoch: int, batch_size: int) -> int:
    # The transaction holds the claimed rows' locks while they are published: the rows are
    # committed work already (this is not publishing inside the transaction that creates
    # them), and the locks only keep other sweepers off. The broker's socket timeouts bound
    # how long that can take.
    with transaction.atomic():
        rows = list(
            OutboxMessage.objects.filter(due)
            .order_by(order)
            .select_for_update(skip_locked=True)[:batch_size]
        )
        if not rows:
            return 0
        published = publish_rows(producer, rows, attempts=2)
        if published:
            mark_sent(published, epoch, only_unsent=False)
    return len(rows)


def outbox_prune(*, older_than: timedelta | None = None, batch_size: int = 5000) -> int:
    """Deletes rows done before `older_than` ago, and processed-message records as old;
    returns how many rows went. In-flight rows are never pruned.

    The processed-message records age with the outbox: a duplicate can only come from a
    row still in flight, or from a publication made before its row was done.
    """
    if older_than is None:
        older_than = timedelta(days=settings.OUTBOX_RETENTION_DAYS)
    deleted = 0
    for queryset in (
        OutboxMessage.objects.filter(done_at__lt=_ClockTimestamp() - older_than),
        ProcessedMessage.objects.filter(processed_at__lt=_ClockTimestamp() - older_than),
    ):
        while True:
            ids = list(queryset.values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            count, _ = queryset.model._default_manager.filter(pk__in=ids).delete()
            deleted += count
    return deleted
