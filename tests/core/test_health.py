"""/healthz and /readyz against the live stack, including a dead worker and a dead Redis."""

from __future__ import annotations

import pytest
import requests

from config.devservices import PrivateRedis

from ..conftest import HEARTBEAT_TTL_S
from ..harness import LiveProcess, wait_for, wait_ready

pytestmark = pytest.mark.live


def _not_ready(base_url: str) -> list[requests.Response]:
    """[the answer] once /readyz answers 503 (a Response of a 503 is falsy itself)."""
    response = requests.get(f"{base_url}/readyz", timeout=10)
    return [response] if response.status_code == 503 else []


def test_healthz(live_web: LiveProcess) -> None:
    response = requests.get(f"{live_web.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_ok_with_a_worker(live_web: LiveProcess, live_worker: LiveProcess) -> None:
    response = requests.get(f"{live_web.url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["database"] == body["redis"] == body["broker"] == "ok"
    assert body["workers"] >= 1


def test_readyz_503_when_the_worker_is_gone(
    live_web: LiveProcess, live_worker: LiveProcess
) -> None:
    live_worker.kill()
    # A killed worker says nothing: it is gone once its last heartbeat expires.
    (response,) = wait_for(
        lambda: _not_ready(live_web.url or ""),
        timeout=HEARTBEAT_TTL_S + 3,
        interval=0.2,
        what="503 after the worker was killed",
    )
    assert response.status_code == 503
    body = response.json()
    assert body["workers"] == 0
    assert body["failing"] == ["workers"]
    live_worker.start()
    assert requests.get(f"{live_web.url}/readyz", timeout=10).status_code == 200


def test_readyz_503_when_redis_is_down(
    live_web: LiveProcess, live_worker: LiveProcess, private_redis: PrivateRedis
) -> None:
    private_redis.stop()
    try:
        response = requests.get(f"{live_web.url}/readyz", timeout=20)
        assert response.status_code == 503
        body = response.json()
        assert body["database"] == "ok"
        assert "redis" in body["failing"] and "broker" in body["failing"]
        assert body["redis"].startswith("error")
    finally:
        private_redis.start()
    # The worker reconnects by itself once Redis is back.
    wait_ready(live_web.url or "", what="readiness after Redis came back")
