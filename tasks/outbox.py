"""Transactional outbox: a task is published only after the transaction that created its
work commits, and never lost after that.

    with transaction.atomic():
        thing = Thing.objects.create(...)
        outbox_enqueue("things.process", args=[thing.pk], key=f"process-{thing.pk}")

1. `outbox_enqueue` writes an `OutboxMessage` row in the caller's transaction (in autocommit
   the row commits at once).
2. After the commit a relay publishes every row of that transaction in one batch (Redis
   pipelines: one round trip per up to 500 messages), then marks them sent with one
   UPDATE. A crash (or a broker error) in between leaves rows unsent.
3. A beat sweeper (`tasks.outbox_sweep`, every ~2 s) republishes, in batches claimed with
   `SELECT … FOR UPDATE SKIP LOCKED` (so sweepers on several hosts never take the same
   rows), every row that may have been lost:
   - unsent rows older than `OUTBOX_SWEEP_UNSENT_AFTER_S` (crash between commit and relay);
   - sent rows not yet done that were published in an older *broker epoch* (below);
   - sent rows not done after `OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S` (any other loss).
4. The worker marks a row done when its task finished for good (success, dead letter,
   ignored): a `task_postrun` receiver, keyed by the `outbox_id` header.

The hard case is a row marked sent whose message was still in Redis when Redis lost its
data (restart without persistence, failover to a lagging replica, a flush): the row looks
sent, the message is gone. Rows therefore stay "in flight" until the worker confirms them,
and every publication is stamped with the epoch of the broker's data it went into. The
epoch is a number kept in a Redis key on the broker itself and allocated from PostgreSQL
(`OutboxEpoch`, ids only grow) whenever that key is missing, which is exactly when Redis
has lost its data. So "in flight and stamped with an epoch below the current one" means
"its message may have been lost": the sweeper publishes those again at once. The epoch is
read *before* publishing, so a stamp can only be too old (a needless second publication,
harmless: consumers are idempotent), never too new (a loss nobody notices). The long
unconfirmed timeout is the net under everything else, set well above the visibility
timeout plus the longest hard limit so normal redelivery has had its chance first, and
republishing at most once per window so a backlog cannot snowball.

Every message carries `task_id = "outbox-<row id>"` and the headers `outbox_id` and
`message_id` (the logical id consumers dedupe on, tasks/consumers.py), so every publication
of one row is the same message to its consumer. Rows done for longer than
`OUTBOX_RETENTION_DAYS` are pruned (`tasks.outbox_prune`, hourly); the dedupe window of
`key` is that retention.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from typing import Any

import kombu.exceptions
from celery import shared_task, signals, states
from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, Func, Max, Q
from django.db.models.functions import Now

from config.celery import app as celery_app

# Imported for its worker-side receivers too (per-queue time limits): the app's ready()
# imports this module in every process.
from . import base as _base  # noqa: F401
from .context import HEADER as REQUEST_ID_HEADER
from .context import get_request_id
from .models import OutboxEpoch, OutboxMessage, ProcessedMessage
from .tracing import record

__all__ = [
    "outbox_broker_epoch",
    "outbox_confirm",
    "outbox_enqueue",
    "outbox_prune",
    "outbox_sweep",
]

logger = logging.getLogger(__name__)

TASK_ID_PREFIX = "outbox-"


def _seconds(name: str, default: float) -> timedelta:
    return timedelta(seconds=float(getattr(settings, name, default)))


class _ClockTimestamp(Func):
    """The database's wall clock now. Ages are measured on the database's clock (one clock
    for every host), and with the statement's time rather than `now()`, which is frozen at
    the start of the sweeper's own transaction."""

    function = "clock_timestamp"
    template = "clock_timestamp()"
    output_field = DateTimeField()


# --- Enqueue --------------------------------------------------------------------------------
_INSERT = (
    f"INSERT INTO {OutboxMessage._meta.db_table} "
    "(task_name, args, kwargs, queue, key, message_id, request_id, created_at, "
    "broker_epoch, publish_count) "
    # clock_timestamp(), not now(): the age the sweeper compares counts from this statement,
    # not from the start of a transaction that may have run a while before it.
    "VALUES (%s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, clock_timestamp(), 0, 0)"
)


def outbox_enqueue(
    task_name: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    key: str | None = None,
    queue: str | None = None,
) -> OutboxMessage:
    """Has `task_name(*args, **kwargs)` run after the caller's transaction commits, at
    least once, and not at all if it rolls back.

    With `key`, enqueueing a key that exists already changes nothing and returns the
    existing row. Arguments must be JSON (ids and primitives): a TypeError here is the
    caller's bug, raised inside its transaction. The row carries the current request id.
    """
    return enqueue_message(
        task_name,
        args=args,
        kwargs=kwargs,
        key=key,
        queue=queue,
        message_id="",
        request_id=get_request_id() or "",
    )


def enqueue_message(
    task_name: str,
    *,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    key: str | None,
    queue: str | None,
    message_id: str,
    request_id: str,
) -> OutboxMessage:
    """`outbox_enqueue` with the logical message id and the request id given (a replayed
    dead letter carries those of the message it replays)."""
    if queue and queue not in celery_app.amqp.queues:
        raise ValueError(f"unknown queue {queue!r}")
    args_list = list(args or [])
    kwargs_dict = dict(kwargs or {})
    sql = _INSERT
    if key is not None:
        sql += " ON CONFLICT (key) DO NOTHING"
    with connection.cursor() as cursor:
        cursor.execute(
            sql + " RETURNING id, created_at",
            [
                task_name,
                json.dumps(args_list),
                json.dumps(kwargs_dict),
                queue or "",
                key,
                message_id,
                request_id,
            ],
        )
        inserted = cursor.fetchone()
    if inserted is None:
        # The key exists: that row (committed, or written earlier in this transaction)
        # is published by whoever wrote it.
        return OutboxMessage.objects.get(key=key)
    row = OutboxMessage(
        id=inserted[0],
        task_name=task_name,
        args=args_list,
        kwargs=kwargs_dict,
        queue=queue or "",
        key=key,
        message_id=message_id,
        request_id=request_id,
        created_at=inserted[1],
    )
    row._state.adding = False
    row._state.db = connection.alias
    record(
        "outbox.enqueued",
        task_name,
        request_id=request_id or None,
        detail={"outbox_id": row.pk, "key": key},
    )
    if connection.in_atomic_block:
        _transaction_batch().rows.append(row)
    else:
        _relay([row])  # autocommit: the row is committed already
    return row


# --- Relay after commit ---------------------------------------------------------------------
_BATCH_ATTR = "_surge_outbox_batch"


class _Batch:
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
        _relay(self.rows, verify=self.rolled_back or replaced)


def _transaction_batch() -> _Batch:
    """The batch of the current transaction, registering its hook on first use.

    Django keeps the hooks of the open transaction in `connection.run_on_commit` and
    replaces that list on commit and on any rollback (of the transaction or of a
    savepoint). While the list is the one we saw, our hook is in it and no savepoint has
    rolled back since; when it changed, we look for the hook once, and start a new batch
    if a rollback dropped it, or note that some of the batch's rows may be gone.
    """
    batch: _Batch | None = getattr(connection, _BATCH_ATTR, None)
    hooks = connection.run_on_commit
    if batch is not None and hooks is not batch.hooks:
        if any(entry[1] is batch for entry in hooks):
            batch.hooks = hooks
            batch.rolled_back = True
        else:
            batch = None
    if batch is None:
        batch = _Batch()
        transaction.on_commit(batch)
        batch.hooks = connection.run_on_commit
        setattr(connection, _BATCH_ATTR, batch)
    return batch


# After a failed relay, this process leaves publishing to the sweeper for a moment instead
# of making every request wait on a broker that is down.
_RELAY_PAUSE_S = 2.0
_relay_paused_until = 0.0
# Messages sent to Redis in one pipeline (one round trip) at most.
_PIPELINE_MAX = 500


def _relay(rows: list[OutboxMessage], *, verify: bool = False) -> None:
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
            epoch = _broker_epoch(producer)
            # One retry: a pooled connection gone stale (a broker restart) reconnects.
            published = _publish(producer, pending, attempts=2)
        if published:
            _mark_sent(published, epoch, only_unsent=True)
    except Exception:
        _relay_paused_until = time.monotonic() + _RELAY_PAUSE_S
        logger.warning(
            "outbox relay failed for %d rows; the sweeper will publish them",
            len(rows),
            exc_info=True,
        )


_MARK_SENT = (
    f"UPDATE {OutboxMessage._meta.db_table} "
    "SET sent_at = STATEMENT_TIMESTAMP(), broker_epoch = %s, publish_count = publish_count + 1 "
    "WHERE id = ANY(%s)"
)


def _mark_sent(rows: list[OutboxMessage], epoch: int, *, only_unsent: bool) -> None:
    """Stamps `rows` sent into `epoch` (SQL by hand: this is on every relay's path)."""
    sql = _MARK_SENT + " AND sent_at IS NULL" if only_unsent else _MARK_SENT
    with connection.cursor() as cursor:
        cursor.execute(sql, [epoch, [row.pk for row in rows]])


# Errors of one row (not of the broker): publishing it again cannot help.
_UNPUBLISHABLE = (KeyError, TypeError, ValueError, kombu.exceptions.EncodeError)


def _publish(producer: Any, rows: list[OutboxMessage], *, attempts: int) -> list[OutboxMessage]:
    """Publishes `rows` over `producer`'s connection; returns those published. A row that
    cannot be published at all (unknown queue, args not a list) becomes a dead letter and
    is marked done, so no sweep trips over it again. A broker error propagates after
    `attempts` tries of the whole batch (a try may have delivered some messages: the
    next one publishes them twice, which consumers ignore)."""
    unpublishable: dict[int, tuple[OutboxMessage, Exception]] = {}
    for attempt in range(1, attempts + 1):
        try:
            published = _publish_pipelined(producer, rows, unpublishable)
            break
        except Exception:
            if attempt == attempts:
                raise
            logger.info("outbox: publishing %d rows failed, trying again", len(rows))
    for row, exc in unpublishable.values():
        _dead_letter_unpublishable(row, exc)
    for row in published:
        record(
            "outbox.published",
            row.task_name,
            request_id=row.request_id or None,
            detail={"outbox_id": row.pk, "publish_count": row.publish_count + 1},
        )
    return published


def _publish_pipelined(
    producer: Any,
    rows: list[OutboxMessage],
    unpublishable: dict[int, tuple[OutboxMessage, Exception]],
) -> list[OutboxMessage]:
    """One try: Celery builds each message as usual; kombu's publish batch sends them to
    Redis in pipelines of up to `_PIPELINE_MAX` (one round trip each) instead of one
    client and one round trip per message. Returns only after the last pipeline ran:
    a row counts as published when Redis has answered for it. A pipeline that fails
    raises (kombu's BatchPublishError: which of its messages arrived is unknown)."""
    published: list[OutboxMessage] = []
    with producer.batch(max_size=_PIPELINE_MAX):
        for row in rows:
            if row.pk in unpublishable:
                continue
            message_id = row.logical_message_id
            headers: dict[str, Any] = {"outbox_id": row.pk, "message_id": message_id}
            if row.request_id:
                headers[REQUEST_ID_HEADER] = row.request_id
            try:
                celery_app.send_task(
                    row.task_name,
                    args=row.args,
                    kwargs=row.kwargs,
                    task_id=f"{TASK_ID_PREFIX}{row.pk}",
                    queue=row.queue or None,
                    headers=headers,
                    producer=producer,
                    # Only a queue's declaration (once per connection) goes over the
                    # network here; the messages go at the batch's flush. A broker error
                    # from either fails this try, and `_publish` tries the whole batch again.
                    retry=False,
                    add_to_parent=False,
                )
            except _UNPUBLISHABLE as exc:
                unpublishable[row.pk] = (row, exc)
                continue
            published.append(row)
    return published


def _dead_letter_unpublishable(row: OutboxMessage, exc: Exception) -> None:
    from .deadletters import deadletter_record

    logger.error("outbox row %s (%s) cannot be published: %r", row.pk, row.task_name, exc)
    deadletter_record(
        task_name=row.task_name,
        task_id=f"{TASK_ID_PREFIX}{row.pk}",
        message_id=row.logical_message_id,
        args=row.args if isinstance(row.args, list) else [row.args],
        kwargs=row.kwargs if isinstance(row.kwargs, dict) else {"value": row.kwargs},
        queue=row.queue,
        reason="unpublishable",
        exception_class=type(exc).__name__,
        exception_message=str(exc),
        traceback="",
        request_id=row.request_id,
        attempts=0,
        first_failed_at=None,
    )
    OutboxMessage.objects.filter(pk=row.pk).update(done_at=Now())


# --- Broker epochs --------------------------------------------------------------------------
_EPOCH_KEY = "surge:outbox:broker-epoch"
_EPOCH_CACHE_S = 1.0
_epoch_cache: tuple[int, float, int] | None = None  # (epoch, valid until, pid)


def _broker_epoch(producer: Any, *, fresh: bool = False) -> int:
    """The current epoch of the broker's data; 0 when the broker is not Redis (then only
    the unconfirmed timeout covers a loss of its data).

    A cached value may be up to a second old: that can only make a stamp older than the
    truth, which costs a needless republication, never a loss (see the module docstring).
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
        return _broker_epoch(producer, fresh=True)


# --- Sweeper --------------------------------------------------------------------------------
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
    batch_size = batch_size or int(getattr(settings, "OUTBOX_SWEEP_BATCH_SIZE", 500))
    if unsent_after is None:
        unsent_after = _seconds("OUTBOX_SWEEP_UNSENT_AFTER_S", 5)
    if unconfirmed_after is None:
        unconfirmed_after = _seconds("OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S", 3600)
    published = 0
    budget = max_batches
    with celery_app.producer_or_acquire() as producer:
        epoch = _broker_epoch(producer, fresh=True)
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
        published = _publish(producer, rows, attempts=2)
        if published:
            _mark_sent(published, epoch, only_unsent=False)
    return len(rows)


# --- Confirmation by the worker -------------------------------------------------------------
def outbox_id_of(task_id: str | None) -> int | None:
    if task_id and task_id.startswith(TASK_ID_PREFIX):
        try:
            return int(task_id[len(TASK_ID_PREFIX) :])
        except ValueError:
            return None
    return None


_CONFIRM = (
    f"UPDATE {OutboxMessage._meta.db_table} SET done_at = STATEMENT_TIMESTAMP() "
    "WHERE id = %s AND done_at IS NULL"
)


def outbox_confirm(*, outbox_id: int | None = None, task_id: str | None = None) -> bool:
    """Marks the row done: its task finished for good, nothing will republish it."""
    if outbox_id is None:
        outbox_id = outbox_id_of(task_id)
    if outbox_id is None:
        return False
    # By hand: the worker runs this after every task from the outbox.
    with connection.cursor() as cursor:
        cursor.execute(_CONFIRM, [outbox_id])
        return bool(cursor.rowcount)


# Finished for good. RETRY is not (a retry message is on its way), nor is REJECTED (put
# back on the queue, or dropped by Celery on purpose: rare, and the sweeper's timeout
# will tell).
_DONE_STATES = frozenset({states.SUCCESS, states.FAILURE, states.IGNORED})


@signals.task_postrun.connect
def _confirm_after_run(task: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or state not in _DONE_STATES:
        return
    request = task.request
    outbox_id = getattr(request, "outbox_id", None) or outbox_id_of(request.id)
    if not outbox_id:
        return  # not from the outbox: nothing to write
    try:
        outbox_confirm(outbox_id=int(outbox_id))
    except Exception:
        # Unconfirmed means published again later: a duplicate the consumer ignores.
        logger.warning("outbox row %s: done not recorded", outbox_id, exc_info=True)


# --- Pruning --------------------------------------------------------------------------------
def outbox_prune(*, older_than: timedelta | None = None, batch_size: int = 5000) -> int:
    """Deletes rows done before `older_than` ago, and processed-message records as old;
    returns how many rows went. In-flight rows are never pruned.

    The processed-message records age with the outbox: a duplicate can only come from a
    row still in flight, or from a publication made before its row was done.
    """
    if older_than is None:
        older_than = timedelta(days=float(getattr(settings, "OUTBOX_RETENTION_DAYS", 7)))
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


@shared_task(name="tasks.outbox_sweep", ignore_result=True)
def sweep() -> int:
    """Beat, every ~2 s. Not a SurgeTask: a failed sweep needs no retry or dead letter,
    the next tick is two seconds away."""
    return outbox_sweep()


@shared_task(name="tasks.outbox_prune", ignore_result=True)
def prune() -> int:
    """Beat, hourly."""
    return outbox_prune()
