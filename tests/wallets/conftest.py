"""Fixtures for the wallets' live tests: extra worker processes (optionally with their own
environment) and a second web process, for the naive apply mode."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings

from ..harness import ROOT, LiveProcess, free_port, http_ready, worker_ready

# Where the session fixtures log (tests/conftest.py), per test database.
LOG_DIR = ROOT / ".run" / f"test-{settings.DATABASES['default']['TEST']['NAME']}" / "logs"

# The setting itself, so the naive mode does not depend on config/settings.py reading it
# from the environment.
NAIVE = {"DJANGO_SETTINGS_MODULE": "tests.wallets.naive_settings", "WALLETS_APPLY_MODE": "naive"}


@pytest.fixture
def worker_pool(
    live_env: dict[str, str], transactional_db: None
) -> Iterator[Callable[..., list[LiveProcess]]]:
    """`worker_pool(n, concurrency=1, env=None)` starts n more Celery worker processes on
    this session's database and Redis (with `env` added to their environment) and returns
    them once all are ready; they are stopped when the test ends."""
    started: list[LiveProcess] = []

    def start(
        n: int, *, concurrency: int = 1, env: dict[str, str] | None = None
    ) -> list[LiveProcess]:
        batch = uuid.uuid4().hex[:8]
        processes = [
            LiveProcess(
                f"wallets-worker-{batch}-{i}",
                [
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-Q",
                    "high,default,bulk",
                    "--concurrency",
                    str(concurrency),
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"wallets-{batch}-{i}-{os.getpid()}@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                env=live_env | (env or {}),
                log_dir=LOG_DIR,
                ready=worker_ready,
                ready_timeout=60.0,
            )
            for i in range(n)
        ]
        started.extend(processes)
        with ThreadPoolExecutor(max_workers=n) as executor:
            list(executor.map(LiveProcess.start, processes))
        return processes

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def naive_web(live_env: dict[str, str], transactional_db: None) -> Iterator[LiveProcess]:
    """gunicorn like `live_web`, but accepting wallet transactions in the naive mode."""
    port = free_port()
    process = LiveProcess(
        "wallets-naive-web",
        [
            "gunicorn",
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        env=live_env | NAIVE,
        log_dir=LOG_DIR,
        url=f"http://127.0.0.1:{port}",
        ready=lambda p: http_ready(f"{p.url}/healthz"),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
