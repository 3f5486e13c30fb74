"""SurgeTask: the base class of every Surge task (the time limits of each queue, part of its
contract, are in tasks/limits.py and re-exported here).

What it adds to Celery's at-least-once delivery (acks_late + reject_on_worker_lost, set
globally in config/celery.py):

- Transient errors (see `is_transient`) retry with exponential backoff and full jitter, up
  to `max_retries`; `Permanent` and every other exception do not retry.
- A task that fails for good (permanent, retries exhausted, redelivered too often, hard
  time limit) becomes exactly one dead letter: it is reported through
  `tasks.failures.record_failure`, whose recorder is tasks/deadletters.py.
- A cap on redeliveries: a message whose run keeps killing its worker (a segfault, the OOM
  killer, os._exit) would otherwise be handed out again forever. Redeliveries are counted
  per task id in Redis, and only for messages the broker marked `redelivered`, so a normal
  run pays nothing for it.
- The success path writes nothing to the database: one dict lookup and a try block.

    @shared_task(name="wallets.apply", base=SurgeTask)
    def apply(wallet_id: int) -> None: ...

    @shared_task(name="mail.send", base=SurgeTask, max_retries=8, retry_backoff_max=600)
    def send(message_id: int) -> None: ...
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import kombu.exceptions
import psycopg2
import redis.exceptions
import requests
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from django import db
from django.conf import settings

from apps.core.redis import get_redis

from .consumers import message_id_of
from .context import HEADER as REQUEST_ID_HEADER
from .context import get_request_id
from .errors import Permanent, Transient
from .failures import TaskFailure, message_done, record_failure
from .limits import QUEUE_TIME_LIMITS, broker_visibility_timeout, queue_time_limits
from .tracing import record

__all__ = [
    "QUEUE_TIME_LIMITS",
    "TRANSIENT_ERRORS",
    "SurgeTask",
    "backoff_delay",
    "is_transient",
    "queue_time_limits",
]

logger = logging.getLogger(__name__)


# --- Transient or permanent ---------------------------------------------------------------
# Decided here, once, by exception class. Everything not listed is permanent: retrying a
# bug or bad input only delays the dead letter an operator has to look at anyway.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Transient,
    ConnectionError,  # builtin: refused, reset, aborted, broken pipe
    TimeoutError,  # builtin, also socket.timeout
    socket.gaierror,  # DNS hiccup
    db.OperationalError,  # lost connection, serialization failure, deadlock
    db.InterfaceError,  # connection already closed
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,  # broker unreachable while publishing
    requests.ConnectionError,
    requests.Timeout,
)

# OSError is also a missing file or a permission problem (permanent); only these errnos
# are the network saying "not now".
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EAGAIN,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True if retrying `exc` later may succeed. `Permanent` always wins."""
    if isinstance(exc, Permanent):
        return False
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def backoff_delay(retries: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number `retries + 1`: "full jitter", uniform in
    [0, min(cap, base * 2**retries)].

    Full jitter rather than a fixed exponential: when a dependency comes back, the tasks
    that failed together would otherwise all retry in the same instant and knock it over
    again; spread uniformly they arrive as a trickle (AWS Architecture Blog, "Exponential
    Backoff And Jitter").
    """
    ceiling = min(cap, base * 2.0 ** min(max(retries, 0), 64))
    return random.uniform(0.0, max(ceiling, 0.0))


# --- The base task ------------------------------------------------------------------------
_REDELIVERY_KEY = "surge:task:redeliveries:{}"
# Long enough to outlive any redelivery loop, short enough to clean up after itself.
_REDELIVERY_KEY_TTL_S = 24 * 3600
# Headers carried from a message to its retry (Celery copies only its own).
_CARRIED_HEADERS = ("outbox_id", "message_id", REQUEST_ID_HEADER)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class _FromSettings:
    """A class attribute whose value is the Django setting `name`, read at each access, so
    `override_settings` and a worker's environment reach it. A value chosen for one task
    (a decorator option, a subclass attribute) is a plain attribute of the task's class
    and shadows it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return getattr(settings, self.name)


class SurgeTask(Task):
    """Retries transient errors with backoff and full jitter, caps redeliveries, and turns
    a task that failed for good into exactly one dead letter. See the module docstring."""

    # Overridable per task in the decorator; the defaults are settings (config/settings.py),
    # so a deployment (or a test worker) tunes them without touching code.
    max_retries = _FromSettings("TASK_MAX_RETRIES")
    retry_backoff_base = _FromSettings("TASK_RETRY_BACKOFF_BASE")
    retry_backoff_max = _FromSettings("TASK_RETRY_BACKOFF_MAX")
    max_redeliveries = _FromSettings("TASK_MAX_REDELIVERIES")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.called_directly:
            # A plain function call (a test, another task calling this one inline).
            return super().__call__(*args, **kwargs)
        delivery_info = request.delivery_info
        if (
            delivery_info
            and delivery_info.get("redelivered")
            and self._over_redelivery_cap(request)
        ):
            return None
        # (Start, success, retry and failure are traced from Celery's signals, tasks/tracing.)
        try:
            return self.run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise  # Celery's own control flow, raised by the task on purpose
        except Exception as exc:
            self._on_error(request, exc)
            raise

    def retry_delay(self, retries: int) -> float:
        """Countdown before the next attempt. Capped below a quarter of the visibility
        timeout: a retry waits in the worker as an unacked ETA message (tasks/limits.py)."""
        delay = backoff_delay(retries, base=self.retry_backoff_base, cap=self.retry_backoff_max)
        return min(delay, broker_visibility_timeout() / 4)

    def _on_error(self, request: Any, exc: Exception) -> None:
        """Raises the retry for a transient error with retries left; otherwise writes the
        dead letter and returns (the caller re-raises, so Celery logs the failure)."""
        retries = int(request.retries or 0)
        transient = is_transient(exc)
        if transient and retries < self.max_retries:
            countdown = self.retry_delay(retries)
            headers = {
                name: value
                for name in _CARRIED_HEADERS
                if (value := getattr(request, name, None)) is not None
            }
            headers["first_failed_at"] = getattr(request, "first_failed_at", None) or (
                _now().isoformat()
            )
            try:
                retry = self.retry(
                    exc=exc, countdown=countdown, throw=False, headers=headers, max_retries=None
                )
            except Reject as lost:
                # The retry message could not be published (broker unreachable): put this
                # message back instead of dropping it; the redelivery cap bounds the loop.
                logger.warning("task %s[%s]: retry not published: %r", self.name, request.id, lost)
                raise Reject(lost.reason, requeue=True) from exc
            raise retry from exc
        if isinstance(exc, Permanent):
            reason = "permanent"
        elif transient:
            reason = "retries_exhausted"
        else:
            reason = "error"
        self._report_failure(
            request,
            reason=reason,
            exception_class=_qualified_name(exc),
            exception_message=str(exc),
            traceback_text=traceback.format_exc(),
            attempts=retries + 1,
        )

    def _over_redelivery_cap(self, request: Any) -> bool:
        """Counts this redelivery; past `max_redeliveries` writes the dead letter instead
        of running (the message is then acked and gone)."""
        key = _REDELIVERY_KEY.format(request.id)
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, _REDELIVERY_KEY_TTL_S)
            redeliveries = int(pipe.execute()[0])
        except redis.exceptions.RedisError as exc:
            # Without the counter, run: at least once beats at most once.
            logger.warning("task %s[%s]: redelivery not counted: %r", self.name, request.id, exc)
            return False
        if redeliveries <= self.max_redeliveries:
            logger.info(
                "task %s[%s]: redelivery %d of at most %d",
                self.name,
                request.id,
                redeliveries,
                self.max_redeliveries,
            )
            return False
        logger.error(
            "task %s[%s]: delivered %d times and its worker was lost each time; dead letter",
            self.name,
            request.id,
            redeliveries + 1,
        )
        self._report_failure(
            request,
            reason="redelivery_cap",
            exception_class="celery.exceptions.WorkerLostError",
            exception_message=(
                f"redelivered {redeliveries} times (cap {self.max_redeliveries}): the worker "
                "running it was lost each time"
            ),
            traceback_text="",
            # Runs that started: the first delivery and every redelivery before this one.
            attempts=redeliveries,
        )
        # No exception reaches Celery here (the message is acked quietly), so no
        # task_failure signal traces it: say it.
        record("task.failed", self.name, detail={"task_id": request.id, "reason": "redelivery_cap"})
        return True

    def _report_failure(
        self,
        request: Any,
        *,
        reason: str,
        exception_class: str,
        exception_message: str,
        traceback_text: str,
        attempts: int,
    ) -> None:
        delivery_info = request.delivery_info or {}
        try:
            record_failure(
                TaskFailure(
                    task_name=self.name,
                    task_id=str(request.id),
                    message_id=message_id_of(request),
                    args=list(request.args or []),
                    kwargs=dict(request.kwargs or {}),
                    queue=str(delivery_info.get("routing_key") or ""),
                    reason=reason,
                    exception_class=exception_class,
                    exception_message=exception_message,
                    traceback=traceback_text,
                    request_id=getattr(request, REQUEST_ID_HEADER, None) or get_request_id() or "",
                    attempts=attempts,
                    first_failed_at=_parse_time(getattr(request, "first_failed_at", None)),
                )
            )
        except Exception as exc:
            # No record of the failure, so the message must not be acked: put it back.
            # The pause keeps a database outage from turning this into a hot loop.
            logger.exception(
                "task %s[%s]: dead letter not written, requeued", self.name, request.id
            )
            time.sleep(1.0)
            raise Reject(exc, requeue=True) from exc

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Failures inside the task were handled by __call__. A hard time limit kills the
        # pool process instead, and Celery reports it here, in the worker's main process.
        if not isinstance(exc, TimeLimitExceeded):
            return
        try:
            record_failure(
                TaskFailure(
                    task_name=self.name,
                    task_id=str(task_id),
                    message_id=str(task_id),
                    args=list(args or []),
                    kwargs=dict(kwargs or {}),
                    queue="",
                    reason="time_limit",
                    exception_class=_qualified_name(exc),
                    exception_message=str(exc),
                    traceback="",
                    request_id="",
                    attempts=1,
                    first_failed_at=None,
                )
            )
            # No task_postrun follows in this process: say the message is done here.
            message_done(str(task_id))
        except Exception:
            logger.exception(
                "task %s[%s]: dead letter of a time limit not written", self.name, task_id
            )
        finally:
            # The main process runs no tasks, so nothing else would ever close it.
            db.connection.close()
