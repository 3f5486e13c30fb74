"""Tracing: what one request caused, in time order, across HTTP, tasks, sagas and more.

Recording is meant to be nearly free on hot paths:
- only work that carries a request id is traced (beat jobs and bare publishes are not);
- `record` appends to an in-process buffer; a daemon thread writes the buffer with one
  bulk insert every `TRACE_FLUSH_INTERVAL` seconds (so a burst of events costs one
  statement), and at exit. The price: events of a process killed with SIGKILL in the last
  interval are lost — acceptable for a diagnostic, never for data.
- `TRACE_FLUSH=sync` writes each event at once in the caller's connection (the test
  process uses it, so events live and die with the test's transaction).
A beat job prunes events older than `TRACE_RETENTION_DAYS`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task, signals
from django.conf import settings
from django.db import connection, transaction

from .context import HEADER, get_request_id

logger = logging.getLogger(__name__)

_buffer: list[dict[str, Any]] = []
_lock = threading.Lock()
_flusher_pid: int | None = None
_MAX_BUFFER = 10_000  # beyond this (database down?) the oldest events are dropped


def _now() -> datetime:
    return datetime.now(tz=UTC)


def record(
    kind: str,
    name: str = "",
    *,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Note one event of the flow that `request_id` (default: the current one) started."""
    request_id = request_id or get_request_id()
    if not request_id or not settings.TRACE_ENABLED:
        return
    event = {
        "request_id": request_id,
        "at": at or _now(),
        "kind": kind,
        "name": name[:200],
        "detail": detail or {},
    }
    if settings.TRACE_FLUSH == "sync":
        _write([event])
        return
    _ensure_flusher()
    with _lock:
        if len(_buffer) >= _MAX_BUFFER:
            del _buffer[: len(_buffer) // 10]
        _buffer.append(event)


def flush() -> int:
    """Write what is buffered now; returns how many events went."""
    with _lock:
        batch = _buffer[:]
        _buffer.clear()
    if batch:
        _write(batch)
    return len(batch)


def _write(events: list[dict[str, Any]]) -> None:
    from .models import TraceEvent

    try:
        # A savepoint when called inside the caller's transaction: a failed insert must
        # not poison the traced work's transaction.
        with transaction.atomic():
            TraceEvent.objects.bulk_create([TraceEvent(**event) for event in events])
    except Exception:  # tracing must never break the traced work
        logger.warning("could not write %d trace events", len(events), exc_info=True)


def _flush_loop() -> None:
    interval = settings.TRACE_FLUSH_INTERVAL
    stop = threading.Event()
    while not stop.wait(interval):
        if _buffer:
            flush()
            # This thread's own connection stays open while events keep coming (a new
            # session per flush cost PostgreSQL ~3 ms of CPU, several times a second per
            # process); it goes when broken or older than CONN_MAX_AGE.
            connection.close_if_unusable_or_obsolete()
        else:
            connection.close()  # quiet: don't hold it idle


def _ensure_flusher() -> None:
    """One flusher thread per process, started lazily (and again in a forked child)."""
    global _flusher_pid
    if _flusher_pid == os.getpid():
        return
    with _lock:
        if _flusher_pid == os.getpid():
            return
        _buffer.clear()  # a forked child must not write its parent's events again
        _flusher_pid = os.getpid()
    threading.Thread(target=_flush_loop, name="trace-flusher", daemon=True).start()


atexit.register(flush)


# --- Task events, for every task that carries a request id -------------------------------


def _record_task(kind: str, task: Any, **extra: Any) -> None:
    # The request id is read from the task's own headers, not the contextvar: signal
    # handlers run in connection order, and this one may run before the one that sets it.
    request = getattr(task, "request", None)
    request_id = getattr(request, HEADER, None)
    if task is None or not request_id:
        return
    detail = {"task_id": getattr(request, "id", None), "retries": getattr(request, "retries", 0)}
    detail.update(extra)
    record(kind, task.name, request_id=request_id, detail=detail)


@signals.task_prerun.connect
def _task_started(task: Any = None, **_: Any) -> None:
    _record_task("task.started", task)


@signals.task_success.connect
def _task_succeeded(sender: Any = None, **_: Any) -> None:
    _record_task("task.succeeded", sender)


@signals.task_retry.connect
def _task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    _record_task("task.retry", sender, reason=str(reason)[:500])


@signals.task_failure.connect
def _task_failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    error = f"{type(exception).__name__}: {exception}"[:500] if exception else ""
    _record_task("task.failed", sender, error=error)


@signals.worker_process_shutdown.connect
def _flush_on_shutdown(**_: Any) -> None:
    flush()


# --- Retention ----------------------------------------------------------------------------


def trace_prune(*, older_than_days: int | None = None) -> int:
    """Delete events past their retention; returns how many went."""
    from .models import TraceEvent

    days = older_than_days if older_than_days is not None else settings.TRACE_RETENTION_DAYS
    deleted, _ = TraceEvent.objects.filter(at__lt=_now() - timedelta(days=days)).delete()
    return deleted


@shared_task(name="tasks.trace_prune")
def trace_prune_task() -> int:
    return trace_prune()


def trace_for(request_id: str) -> list[Any]:
    """Every event of one request id, in time order (the admin's Trace view)."""
    from .models import TraceEvent

    return list(TraceEvent.objects.filter(request_id=request_id).order_by("at", "id")[:2000])
