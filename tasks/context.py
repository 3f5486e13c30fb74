"""The request id of the work in hand, for log lines, task headers and events.

A contextvar rather than a thread-local: it is right in sync views, in asyncio
consumers and in Celery worker processes alike.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar, Token

_request_id: ContextVar[str | None] = ContextVar("surge_request_id", default=None)

# Accepted from clients as is: up to 128 "safe" characters, so an id can never smuggle
# a newline into a log line or a header.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

HEADER = "request_id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str | None:
    """The client's id if it is safe to echo, else None (the caller generates one)."""
    if value and _SAFE_ID.match(value):
        return value
    return None


def get_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Puts the current request id on every record as `request_id` ("-" when none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            # django.request logs a response after the middleware has left the context,
            # but it passes the request along.
            request = getattr(record, "request", None)
            record.request_id = _request_id.get() or getattr(request, "request_id", None) or "-"
        return True
