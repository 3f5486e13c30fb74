"""Dead letters: every task that failed for good leaves exactly one row an operator can
inspect (task, args, error, traceback, request id, attempts) and replay or discard.

Written for what SurgeTask (permanent error, retries exhausted, redelivery cap, hard time
limit) and the outbox (a row that cannot be published at all) report through
`tasks.failures.record_failure`: this module is its recorder. Also written here for a message
naming a task the worker does not have. Replay goes through the outbox, with the original
logical message id, so an effect the failed run did commit is not applied twice.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from celery import signals
from django import db
from django.db import connection, transaction
from django.utils import timezone

from config.celery import app as celery_app

from .failures import TaskFailure, message_done, set_failure_recorder
from .models import DeadLetter
from .outbox import enqueue_message
from .statemachine import StateMachine
from .tracing import record

__all__ = [
    "DEADLETTER_STATUS",
    "deadletter_discard",
    "deadletter_record",
    "deadletter_replay",
]

logger = logging.getLogger(__name__)

OPEN = DeadLetter.Status.OPEN
REPLAYED = DeadLetter.Status.REPLAYED
DISCARDED = DeadLetter.Status.DISCARDED

DEADLETTER_STATUS = StateMachine("deadletter", {OPEN: {REPLAYED, DISCARDED}})

# Tracebacks and messages can be huge (a repr of a big payload); the row stays readable.
_MAX_TEXT = 20_000

_UPSERT = f"""
INSERT INTO {DeadLetter._meta.db_table} AS d
    (task_name, task_id, message_id, args, kwargs, queue, reason, exception_class,
     exception_message, traceback, request_id, attempts, first_failed_at, last_failed_at,
     status, replay_key)
VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s, %s,
        COALESCE(%s, now()), now(), 'open', '')
ON CONFLICT (task_id) DO UPDATE SET
    reason = EXCLUDED.reason,
    exception_class = EXCLUDED.exception_class,
    exception_message = EXCLUDED.exception_message,
    traceback = EXCLUDED.traceback,
    attempts = GREATEST(d.attempts, EXCLUDED.attempts),
    last_failed_at = now()
RETURNING id, (xmax = 0) AS inserted
"""


def deadletter_record(
    *,
    task_name: str,
    task_id: str,
    message_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str,
    reason: str,
    exception_class: str,
    exception_message: str,
    traceback: str,
    request_id: str,
    attempts: int,
    first_failed_at: datetime | None,
) -> int:
    """Writes the dead letter of task `task_id`; returns its id.

    At most one row per task id: a message that fails again (its worker died after the
    first write, before the ack) updates the row it already has instead of adding one.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _UPSERT,
            [
                task_name,
                task_id,
                message_id,
                json.dumps(args, default=repr),
                json.dumps(kwargs, default=repr),
                queue,
                reason,
                exception_class[:200],
                exception_message[:_MAX_TEXT],
                traceback[-_MAX_TEXT:],
                request_id,
                attempts,
                first_failed_at,
            ],
        )
        dead_letter_id, inserted = cursor.fetchone()
    if inserted:
        logger.error(
            "dead letter %s: %s[%s] %s: %s",
            dead_letter_id,
            task_name,
            task_id,
            reason,
            exception_class,
        )
        record(
            "deadletter.created",
            task_name,
            request_id=request_id or None,
            detail={"dead_letter_id": dead_letter_id, "task_id": task_id, "reason": reason},
        )
    return int(dead_letter_id)


@set_failure_recorder
def _record_reported_failure(failure: TaskFailure) -> None:
    """The recorder of `tasks.failures`: every reported failure becomes its dead letter."""
    deadletter_record(
        task_name=failure.task_name,
        task_id=failure.task_id,
        message_id=failure.message_id,
        args=failure.args,
        kwargs=failure.kwargs,
        queue=failure.queue,
        reason=failure.reason,
        exception_class=failure.exception_class,
        exception_message=failure.exception_message,
        traceback=failure.traceback,
        request_id=failure.request_id,
        attempts=failure.attempts,
        first_failed_at=failure.first_failed_at,
    )


def deadletter_replay(*, dead_letter_id: int) -> bool:
    """Runs the dead letter's task again, once, through the outbox; True if this call did.

    Invariant: an open dead letter is replayed at most once. The row is locked, moved
    open -> replayed, and the outbox row (key "deadletter-replay-<id>") written in one
    transaction, so two clicks, or two admins at once, enqueue one run. A task name this
    code base no longer has is not replayed (logged; the row stays open).
    """
    with transaction.atomic():
        dead = DeadLetter.objects.select_for_update().filter(pk=dead_letter_id).first()
        if dead is None or dead.status != OPEN:
            return False
        if not _task_exists(dead.task_name):
            logger.warning(
                "dead letter %s not replayed: no task named %r", dead_letter_id, dead.task_name
            )
            return False
        queue = dead.queue if dead.queue in celery_app.amqp.queues else None
        replay_key = f"deadletter-replay-{dead.pk}"
        row = enqueue_message(
            dead.task_name,
            args=dead.args if isinstance(dead.args, list) else [],
            kwargs=dead.kwargs if isinstance(dead.kwargs, dict) else {},
            key=replay_key,
            queue=queue,
            message_id=dead.message_id or dead.task_id,
            request_id=dead.request_id,
        )
        DEADLETTER_STATUS.move(
            dead,
            REPLAYED,
            fields={
                "replayed_at": timezone.now(),
                "replay_key": replay_key,
                "replay_outbox_id": row.pk,
            },
        )
    logger.info("dead letter %s replayed as outbox row %s", dead_letter_id, row.pk)
    record(
        "deadletter.replayed",
        dead.task_name,
        request_id=dead.request_id or None,
        detail={"dead_letter_id": dead.pk, "outbox_id": row.pk},
    )
    return True


def _task_exists(name: str) -> bool:
    if name in celery_app.tasks:
        return True
    # Outside a worker the apps' task modules are imported only on demand (Celery's
    # autodiscovery runs when a worker starts): import them, then look again.
    celery_app.loader.import_default_modules()
    return name in celery_app.tasks


def deadletter_discard(*, dead_letter_id: int) -> bool:
    """Closes an open dead letter without running it; True if this call did."""
    moved = DEADLETTER_STATUS.update(
        DeadLetter.objects.filter(pk=dead_letter_id),
        current=OPEN,
        target=DISCARDED,
        strict=False,
        discarded_at=timezone.now(),
    )
    return bool(moved)


@signals.task_unknown.connect
def _dead_letter_unknown_task(
    message: Any = None, exc: Any = None, name: str | None = None, id: str | None = None, **_: Any
) -> None:
    """A message for a task this worker does not have: Celery logs it and drops it; we keep
    it as a dead letter (the operator may deploy the task and replay it)."""
    try:
        headers = getattr(message, "headers", None) or {}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        try:
            body = message.decode()
            if isinstance(body, list | tuple) and len(body) >= 2:
                args, kwargs = list(body[0] or []), dict(body[1] or {})
        except Exception:
            logger.warning("unknown task %r: body not readable", name, exc_info=True)
        task_id = str(id or headers.get("id") or "")
        deadletter_record(
            task_name=str(name or ""),
            task_id=task_id,
            message_id=str(headers.get("message_id") or task_id),
            args=args,
            kwargs=kwargs,
            queue=str((getattr(message, "delivery_info", None) or {}).get("routing_key") or ""),
            reason=DeadLetter.Reason.UNKNOWN_TASK,
            exception_class="celery.exceptions.NotRegistered",
            exception_message=f"no task named {name!r} in this worker",
            traceback="",
            request_id=str(headers.get("request_id") or ""),
            attempts=1,
            first_failed_at=None,
        )
        message_done(task_id)  # this process sends no task_postrun for it
    except Exception:
        logger.exception("unknown task %r: dead letter not written", name)
    finally:
        # This runs in the worker's main process, which runs no tasks: nothing else would
        # close the connection.
        db.connection.close()
