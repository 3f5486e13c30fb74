"""Carry the request id from whoever publishes a task into the worker that runs it."""

from __future__ import annotations

from typing import Any

from celery import signals

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
    request_id = getattr(task.request, HEADER, None) if task is not None else None
    if task_id:
        _tokens[task_id] = set_request_id(request_id)


@signals.task_postrun.connect
def _leave_request_id(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        reset_request_id(token)
