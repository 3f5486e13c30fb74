"""Fixtures for the wallets' live tests: a second web process for the naive apply mode
(extra workers come from `worker_pool` in tests/conftest.py, with `env=NAIVE`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from ..harness import ROOT, LiveProcess, free_port, gunicorn_argv, http_ready

# Where the session fixtures log (tests/conftest.py), per test database.
LOG_DIR = ROOT / ".run" / f"test-{settings.DATABASES['default']['TEST']['NAME']}" / "logs"

# The environment of the naive-mode processes (config/settings.py reads the mode from it).
NAIVE = {"WALLETS_APPLY_MODE": "naive"}


@pytest.fixture
def naive_web(live_env: dict[str, str], transactional_db: None) -> Iterator[LiveProcess]:
    """gunicorn like `live_web`, but accepting wallet transactions in the naive mode."""
    port = free_port()
    process = LiveProcess(
        "wallets-naive-web",
        gunicorn_argv(port),
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
