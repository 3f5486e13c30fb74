"""One Redis client per process for direct use (gates, counters, health checks)."""

from __future__ import annotations

import os

import redis
from django.conf import settings

_client: redis.Redis | None = None
_client_pid: int | None = None


def get_redis() -> redis.Redis:
    """A shared client, created lazily and again after a fork (prefork workers, gunicorn)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2, health_check_interval=30
        )
        _client_pid = os.getpid()
    return _client
