"""Fixtures for the toolkit's tests: extra Celery worker processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings

from ..harness import ROOT, LiveProcess, worker_ready

# The same place the session fixtures log to (tests/conftest.py), per test database.
LOG_DIR = ROOT / ".run" / f"test-{settings.DATABASES['default']['TEST']['NAME']}" / "logs"


@pytest.fixture
def worker_pool(
    live_env: dict[str, str], transactional_db: None
) -> Iterator[Callable[..., list[LiveProcess]]]:
    """`worker_pool(n, concurrency=1, queues="high,default,bulk")` starts n more Celery
    worker processes (each with a unique hostname, on this session's database and Redis)
    and returns them once all are ready; they are stopped when the test ends.

    They start in parallel: a worker takes seconds to import Django, and a test waiting
    for three one after the other would mostly wait.
    """
    started: list[LiveProcess] = []

    def start(
        n: int, *, concurrency: int = 1, queues: str = "high,default,bulk"
    ) -> list[LiveProcess]:
        batch = uuid.uuid4().hex[:8]
        processes = [
            LiveProcess(
                f"worker-pool-{batch}-{i}",
                [
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-Q",
                    queues,
                    "--concurrency",
                    str(concurrency),
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"pool-{batch}-{i}-{os.getpid()}@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                env=live_env,
                log_dir=LOG_DIR,
                ready=worker_ready,
                ready_timeout=60.0,
            )
            for i in range(n)
        ]
        started.extend(processes)
        with ThreadPoolExecutor(max_workers=n) as executor:
            # list() re-raises the first start failure; teardown stops the others.
            list(executor.map(LiveProcess.start, processes))
        return processes

    try:
        yield start
    finally:
        for process in started:
            process.stop()
