"""Liveness and readiness: what a load balancer and an operator ask first."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from apps.core.redis import get_redis
from config.celery import app as celery_app

from .heartbeat import heartbeat_live_workers


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


def _describe(exc: Exception) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:300]


def _declared_queues() -> list[str]:
    return [queue.name for queue in celery_app.conf.task_queues or ()]


def _check_workers(body: dict[str, Any], redis_failing: bool) -> str | None:
    """Fills `workers` (and `queues_without_consumer`); returns why they are not ready, or
    None. Live workers are the ones whose heartbeat has not expired (apps/ops/heartbeat.py):
    one read, no wait for replies."""
    body["workers"] = 0
    if redis_failing:
        return "unknown: worker heartbeats are kept in Redis, which does not answer"
    try:
        live = heartbeat_live_workers()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"unknown: worker heartbeats unreadable: {_describe(exc)}"
    body["workers"] = len(live)
    consumed = {queue for queues in live.values() for queue in queues}
    uncovered = [queue for queue in _declared_queues() if queue not in consumed]
    if uncovered:
        body["queues_without_consumer"] = uncovered
    if not live:
        return f"no worker heartbeat in the last {settings.WORKER_HEARTBEAT_TTL_S:g} s"
    if uncovered:
        return f"no live worker consumes {', '.join(uncovered)}"
    return None


def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every dependency answers and every queue has a live worker; else 503 naming
    the failing parts in `failing`, and why each fails in `reasons`."""
    body: dict[str, Any] = {}
    failing: list[str] = []
    reasons: dict[str, str] = {}
    for name, check in (
        ("database", _check_database),
        ("redis", _check_redis),
        ("broker", _check_broker),
    ):
        try:
            body[name] = check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            body[name] = reasons[name] = _describe(exc)
            failing.append(name)
    workers_reason = _check_workers(body, redis_failing="redis" in failing)
    if workers_reason is not None:
        failing.append("workers")
        reasons["workers"] = workers_reason
    if failing:
        body["failing"] = failing
        body["reasons"] = reasons
        return JsonResponse(body, status=503)
    return JsonResponse(body)
