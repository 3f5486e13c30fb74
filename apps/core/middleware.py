"""Request id on every request, and JSON (never HTML) errors under /api/."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from tasks import tracing
from tasks.context import clean_request_id, new_request_id, reset_request_id, set_request_id

from .errors import ErrorCode

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Reads or makes `X-Request-ID`, exposes it to logs and tasks, and returns it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.request_id = request_id  # type: ignore[attr-defined]
        token = set_request_id(request_id)
        started_at = datetime.now(tz=UTC)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            if _traced(request):
                tracing.record(
                    "http.request",
                    f"{request.method} {request.path}",
                    at=started_at,
                    detail={
                        "status": response.status_code,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "user": getattr(getattr(request, "user", None), "pk", None),
                    },
                )
        finally:
            reset_request_id(token)
        response[REQUEST_ID_HEADER] = request_id
        return response


def _traced(request: HttpRequest) -> bool:
    """Writes to the API start flows worth tracing; reads and bench plumbing do not."""
    return (
        request.method not in ("GET", "HEAD", "OPTIONS")
        and request.path.startswith("/api/")
        and not request.path.startswith("/api/bench/")
    )


_STATUS_CODES = {
    400: (ErrorCode.BAD_REQUEST, "Bad request."),
    403: (ErrorCode.PERMISSION_DENIED, "Permission denied."),
    404: (ErrorCode.NOT_FOUND, "Not found."),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed."),
    413: (ErrorCode.REQUEST_TOO_LARGE, "Request body is too large."),
    500: (ErrorCode.SERVER_ERROR, "Internal server error."),
}


class ApiJsonErrorsMiddleware:
    """Replaces Django's HTML error pages (404, 405, 400, 500 …) with JSON under /api/.

    DRF views already answer JSON; this covers unknown routes, Django-level rejections
    (bad Host, oversize form bodies) and bugs, including DEBUG's technical pages.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A database that does not answer (PostgreSQL down, or its first seconds after a
        restart: each process's kept connection breaks once) is a 503 the client may retry,
        on any path, never a 500. DRF views answer it in their exception handler already;
        this covers the rest (pages, the admin) and `InterfaceError` (a closed connection
        used again in the same request)."""
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable: %s", exception)
        return JsonResponse(
            {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "detail": "Try again shortly."},
            status=503,
            headers={"Retry-After": "1"},
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith("/api/") or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        code, detail = _STATUS_CODES.get(
            response.status_code,
            (ErrorCode.SERVER_ERROR, "Error.")
            if response.status_code >= 500
            else (ErrorCode.BAD_REQUEST, "Bad request."),
        )
        replacement = JsonResponse(
            {"code": code.value, "detail": detail}, status=response.status_code
        )
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                replacement[header] = response[header]
        return replacement
