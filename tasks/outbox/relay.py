"""The relay: the rows of one transaction, published together by one `on_commit` hook."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import connection, transaction

from config.celery import app as celery_app

from ..models import OutboxMessage
from .epoch import broker_epoch
from .publish import mark_sent, publish_rows

logger = logging.getLogger(__name__)

_BATCH_ATTR = "_surge_outbox_batch"


class TransactionBatch:
    """The rows one transaction enqueued; one `on_commit` hook publishes them together."""

    __slots__ = ("hooks", "rolled_back", "rows")

    def __init__(self) -> None:
        self.rows: list[OutboxMessage] = []
        self.hooks: list[Any] | None = None
        # A savepoint was rolled back after rows were added: some may not exist.
        self.rolled_back = False

    def __call__(self) -> None:
        if getattr(connection, _BATCH_ATTR, None) is self:
            setattr(connection, _BATCH_ATTR, None)
        # Django takes each hook off the list it runs before calling it. Our entry still
        # in the list we last saw means that list was replaced after our last row: a
        # savepoint rolled back (or we are called by hand, as tests do). Then the relay
        # asks the database which rows exist; otherwise every row committed.
        replaced = self.hooks is None or any(entry[1] is self for entry in self.hooks)
        relay_rows(self.rows, verify=self.rolled_back or replaced)


def transaction_batch() -> TransactionBatch:
    """The batch of the current transaction, registering its hook on first use.

    Django keeps the hooks of the open transaction in `connection.run_on_commit` and
    replaces that list on commit and on any rollback (of the transaction or of a
    savepoint). While the list is the one we saw, our hook is in it and no savepoint has
    rolled back since; when it changed, we look for the hook once, and start a new batch
    if a rollback dropped it, or note that some of the batch's rows may be gone.
    """
    batch: TransactionBatch | None = getattr(connection, _BATCH_ATTR, None)
    hooks = connection.run_on_commit
    if batch is not None and hooks is not batch.hooks:
        if any(entry[1] is batch for entry in hooks):
            batch.hooks = hooks
            batch.rolled_back = True
        else:
            batch = None
    if batch is None:
        batch = TransactionBatch()
        transaction.on_commit(batch)
        batch.hooks = connection.run_on_commit
        setattr(connection, _BATCH_ATTR, batch)
    return batch


# After a failed relay, this process leaves publishing to the sweeper for a moment instead
# of making every request wait on a broker that is down.
_RELAY_PAUSE_S = 2.0
_relay_paused_until = 0.0


def relay_rows(rows: list[OutboxMessage], *, verify: bool = False) -> None:
    """Publishes committed rows not yet sent, then marks them sent. Never raises: a row
    it could not publish stays unsent for the sweeper. With `verify`, first asks which
    of the rows exist (a savepoint that rolled back took some away)."""
    global _relay_paused_until
    if not rows or time.monotonic() < _relay_paused_until:
        return
    try:
        pending = rows
        if verify:
            unsent = set(
                OutboxMessage.objects.filter(
                    pk__in=[row.pk for row in rows], sent_at__isnull=True
                ).values_list("pk", flat=True)
            )
            pending = [row for row in rows if row.pk in unsent]
            if not pending:
                return
        with celery_app.producer_or_acquire() as producer:
            epoch = broker_epoch(producer)
            # One retry: a pooled connection gone stale (a broker restart) reconnects.
            published = publish_rows(producer, pending, attempts=2)
        if published:
            mark_sent(published, epoch, only_unsent=True)
    except Exception:
        _relay_paused_until = time.monotonic() + _RELAY_PAUSE_S
        logger.warning(
            "outbox relay failed for %d rows; the sweeper will publish them",
            len(rows),
            exc_info=True,
        )
