"""Time limits per queue, below the Redis visibility timeout, applied by the worker that
receives a message. Part of SurgeTask's contract (tasks/base.py re-exports the public
names); a module of its own because it is a worker-side signal receiver, not task code."""

from __future__ import annotations

import functools
from typing import Any

from celery import current_app, signals

from config.celery import LONGEST_HARD_LIMIT_S

__all__ = ["QUEUE_TIME_LIMITS", "broker_visibility_timeout", "queue_time_limits"]

# --- Time limits per queue ----------------------------------------------------------------
# (soft, hard) seconds. The soft limit raises SoftTimeLimitExceeded inside the task (it may
# clean up, and it becomes a dead letter); the hard limit kills the pool process.
#
# Why every limit sits below the Redis visibility timeout (CELERY_VISIBILITY_TIMEOUT in
# config/settings.py, 2 x LONGEST_HARD_LIMIT_S by default): the Redis transport hands an
# unacked message to another worker once it has been out for `visibility_timeout`, counted
# from when the worker fetched it, not from when the task started. A task still running at
# that point would run twice at once. So a message may wait in a worker (prefetched, or held
# for a retry countdown) and run to its hard limit and still be acked before the timeout:
# `queue_time_limits` keeps the hard limit at or below half of the timeout, and retry
# countdowns below a quarter of it.
# Long work is cut into bounded batches that re-enqueue the rest; long delays are rows plus
# a beat sweep, never ETA messages.
QUEUE_TIME_LIMITS: dict[str, tuple[float, float]] = {
    # Transactional, user-facing work: a stuck call must give way quickly.
    "high": (25.0, 30.0),
    "default": (240.0, 300.0),
    # Batches (fan-out, campaigns): the longest a task may run anywhere.
    "bulk": (LONGEST_HARD_LIMIT_S - 30.0, float(LONGEST_HARD_LIMIT_S)),
}


def broker_visibility_timeout() -> float:
    """The Redis visibility timeout of this process's broker settings (seconds)."""
    options = current_app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", 3600))


@functools.lru_cache(maxsize=32)
def _limits_for(queue: str, visibility_timeout: float) -> tuple[float, float]:
    soft, hard = QUEUE_TIME_LIMITS.get(queue, QUEUE_TIME_LIMITS["default"])
    ceiling = visibility_timeout / 2
    if hard > ceiling:
        # A short visibility timeout (the tests use 10 s) shrinks the limits with it.
        hard = ceiling
        soft = min(soft, hard * 0.9)
    return soft, hard


def queue_time_limits(
    queue: str, *, visibility_timeout: float | None = None
) -> tuple[float, float]:
    """(soft, hard) time limits for tasks consumed from `queue`, below the visibility
    timeout of this process's broker settings (or the one given)."""
    if visibility_timeout is None:
        visibility_timeout = broker_visibility_timeout()
    return _limits_for(queue, visibility_timeout)


@signals.task_received.connect
def _apply_queue_time_limits(request: Any = None, **_: Any) -> None:
    """Gives a received message the limits of the queue it came from.

    Applied by the consuming worker (main process, before the task is handed to the pool)
    rather than stamped by the publisher: the worker knows which queue the message really
    came from and its own visibility timeout, and messages from any publisher (beat, a
    shell, another service) get limits too.

    Celery copies the global `task_time_limit` / `task_soft_time_limit` onto every task
    and stamps them on every message it publishes, so those values mean "nothing chosen":
    they are replaced. A limit chosen for the task (`@shared_task(time_limit=…)`) or for
    one message (`apply_async(time_limit=…)`) is different from the global one and wins.
    """
    if request is None:
        return
    conf = current_app.conf
    unchosen = {(None, None), (conf.task_time_limit, conf.task_soft_time_limit)}
    if tuple(request.time_limits or (None, None)) not in unchosen:
        return
    task = request.task
    if (task.time_limit, task.soft_time_limit) not in unchosen:
        request.time_limits = (task.time_limit, task.soft_time_limit)
        return
    queue = (request.delivery_info or {}).get("routing_key") or ""
    soft, hard = queue_time_limits(queue)
    request.time_limits = (hard, soft)
