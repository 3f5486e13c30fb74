"""Where the toolkit reports a task that failed for good, so the parts that report it
(SurgeTask, the outbox) need not import the parts that act on it (the dead letters, the
outbox's confirmation), which import them.

Two hooks, each registered once, when its module is imported (the `tasks` app's ready()
imports them in every process):

- the *failure recorder* (tasks/deadletters.py) keeps the failure: `record_failure` calls
  it, and raises when it is missing or fails, so the caller does not ack a message whose
  failure nobody recorded;
- the *done listeners* (tasks/outbox/confirm.py) hear `message_done(task_id)` where a
  message finished for good but Celery sends no `task_postrun` (the worker's main process
  after a hard time limit, or for a task it does not have).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "TaskFailure",
    "message_done",
    "on_message_done",
    "record_failure",
    "set_failure_recorder",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailure:
    """One task that failed for good: what an operator needs to inspect and replay it."""

    task_name: str
    task_id: str
    message_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    reason: str
    exception_class: str
    exception_message: str
    traceback: str
    request_id: str
    attempts: int
    first_failed_at: datetime | None


FailureRecorder = Callable[[TaskFailure], object]
DoneListener = Callable[[str], object]

_recorder: FailureRecorder | None = None
_done_listeners: list[DoneListener] = []


def set_failure_recorder(recorder: FailureRecorder) -> FailureRecorder:
    """Makes `recorder` the one place failures go (a decorator). A second recorder
    replaces the first: one failure must become one record, not one per recorder."""
    global _recorder
    _recorder = recorder
    return recorder


def record_failure(failure: TaskFailure) -> None:
    """Hands `failure` to the recorder. Raises if there is none or it fails: the caller
    must then keep the message (requeue it) rather than lose the failure."""
    if _recorder is None:
        raise RuntimeError("no failure recorder registered (is the `tasks` app installed?)")
    _recorder(failure)


def on_message_done(listener: DoneListener) -> DoneListener:
    """Registers `listener(task_id)` for `message_done` (a decorator); idempotent."""
    if listener not in _done_listeners:
        _done_listeners.append(listener)
    return listener


def message_done(task_id: str) -> None:
    """The message of `task_id` finished for good where no `task_postrun` will say so."""
    for listener in _done_listeners:
        listener(task_id)
