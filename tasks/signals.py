"""Carry the request id from whoever publishes a task into the worker that runs it, and
keep a worker's database connections the way Django's request cycle keeps a web process's."""

from __future__ import annotations

from typing import Any

from celery import signals
from django.db import close_old_connections, connections

from .context import HEADER, get_request_id, reset_request_id, set_request_id

# task id -> contextvar token, so postrun restores exactly what prerun replaced.
_tokens: dict[str, Any] = {}


@signals.before_task_publish.connect
def _stamp_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = get_request_id()
    if request_id and headers is not None and not headers.get(HEADER):
        headers[HEADER] = request_id


@signals.task_prerun.connect
def _enter_request_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    _recycle_connections(task)
    request_id = getattr(task.request, HEADER, None) if task is not None else None
    if task_id:
        _tokens[task_id] = set_request_id(request_id)


@signals.task_postrun.connect
def _leave_request_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        reset_request_id(token)
    _recycle_connections(task)


@signals.worker_init.connect
def _check_reused_connections(**_: Any) -> None:
    """A worker keeps its connections across tasks, so each task's first query checks the
    one it reuses (Django's CONN_HEALTH_CHECKS: one `SELECT 1`); a PostgreSQL restart then
    costs a reconnect, not a failed attempt. Set before the pool forks, so every child has
    it. Web processes leave it off (DB_CONN_HEALTH_CHECKS): a request is cheaper than a task
    to fail and retry."""
    for alias in connections:
        connections.settings[alias]["CONN_HEALTH_CHECKS"] = True  # read when a connection opens


def _recycle_connections(task: Any) -> None:
    """Closes connections that broke (an error left them unusable) or outlived CONN_MAX_AGE,
    as Django does at the start and end of every request. Celery's own fixup would close
    every connection around every task (see CELERY_DB_REUSE_MAX in config/settings.py).
    Eager runs share the caller's connection and transaction: left alone."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
