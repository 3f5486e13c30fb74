"""The orders tests use `live_gateway` and `_session_gateway` from tests/conftest.py (the
gateway's URL is also in `live_env`, so live web and worker processes reach it), and
`slow_gateway` below."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..conftest import LOG_DIR
from ..harness import LiveProcess, free_port, http_ready

# How late the slow gateway's tok_slow answers: long next to a step's own statements, so a
# connection held idle in transaction across a call would be seen for that long.
SLOW_GATEWAY_DELAY_MS = 500


@pytest.fixture(scope="module")
def slow_gateway() -> Iterator[str]:
    """A second fake gateway whose tok_slow answers after SLOW_GATEWAY_DELAY_MS; its URL.
    Only processes given it in their environment use it (the session's use the other)."""
    port = free_port()
    env = dict(os.environ, FAKE_GATEWAY_DELAY_MS=str(SLOW_GATEWAY_DELAY_MS), PYTHONUNBUFFERED="1")
    process = LiveProcess(
        "gateway-slow",
        ["python", "-m", "apps.orders.fake_gateway", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_dir=LOG_DIR,
        url=f"http://127.0.0.1:{port}",
        ready=lambda p: http_ready(f"{p.url}/health"),
    )
    process.start()
    try:
        yield process.url or ""
    finally:
        process.stop()
