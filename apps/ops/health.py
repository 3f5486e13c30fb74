"""Liveness and readiness: what a load balancer and an operator ask first."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse

from apps.core.redis import get_redis
from config.celery import app as celery_app

WORKER_PING_TIMEOUT_S = 1.0


def healthz(request: HttpRequest) -> JsonResponse:
    """The process serves: nothing else is checked."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_redis() -> str:
    get_redis().ping()
    return "ok"


def _check_broker() -> str:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return "ok"


def _count_workers() -> int:
    replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT_S) or []
    return len(replies)


def _describe(exc: Exception) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:300]


def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every dependency answers and at least one worker lives; else 503 naming
    the failing parts in `failing`."""
    body: dict[str, Any] = {}
    failing: list[str] = []
    for name, check in (
        ("database", _check_database),
        ("redis", _check_redis),
        ("broker", _check_broker),
    ):
        try:
            body[name] = check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            body[name] = _describe(exc)
            failing.append(name)
    if "broker" in failing:
        body["workers"] = 0
    else:
        try:
            body["workers"] = _count_workers()
        except Exception:  # noqa: BLE001
            body["workers"] = 0
    if body["workers"] < 1:
        failing.append("workers")
    if failing:
        body["failing"] = failing
        return JsonResponse(body, status=503)
    return JsonResponse(body)
