"""Fixtures for the lab's live tests: a web process with the lab on (extra workers with the
lab's tasks come from `worker_pool` in tests/conftest.py, with `env=LAB`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from ..harness import ROOT, LiveProcess, free_port, gunicorn_argv, http_ready

# Where the session fixtures log (tests/conftest.py), per test database.
LOG_DIR = ROOT / ".run" / f"test-{settings.DATABASES['default']['TEST']['NAME']}" / "logs"

# The environment of the processes that install and route the lab (config/settings.py).
LAB = {"LAB_ENABLED": "true"}


@pytest.fixture
def lab_web(live_env: dict[str, str], transactional_db: None) -> Iterator[LiveProcess]:
    """gunicorn like `live_web`, with the lab's routes (the naive variants among them)."""
    port = free_port()
    process = LiveProcess(
        "lab-web",
        gunicorn_argv(port),
        env=live_env | LAB,
        log_dir=LOG_DIR,
        url=f"http://127.0.0.1:{port}",
        ready=lambda p: http_ready(f"{p.url}/healthz"),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
