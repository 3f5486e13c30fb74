"""Worker heartbeats and the /readyz answer built on them, against the session's real Redis
and PostgreSQL (in this process; tests/ops/test_readiness.py drives real workers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from apps.core.redis import get_redis
from apps.ops import heartbeat
from config.celery import QUEUES, SAGA_QUEUE
from config.celery import app as celery_app


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Heartbeats of this test's own: live workers of the session beat into the real keys."""
    tag = f"{{surge:workers-test-{uuid.uuid4().hex}}}"
    keys = [f"{tag}:expires", f"{tag}:queues"]
    monkeypatch.setattr(heartbeat, "EXPIRIES_KEY", keys[0])
    monkeypatch.setattr(heartbeat, "QUEUES_KEY", keys[1])
    monkeypatch.setattr(heartbeat, "KEYS", keys)
    yield
    get_redis().delete(*keys)


def _beat(hostname: str, queues: list[str] | tuple[str, ...], ttl_s: float = 30) -> None:
    heartbeat.heartbeat_beat(
        client=get_redis(), hostname=hostname, queues=list(queues), ttl_s=ttl_s
    )


def test_a_beat_counts_until_its_ttl_and_is_then_forgotten() -> None:
    _beat("short@host", ["high"], ttl_s=0.3)
    _beat("long@host", ["saga", "bulk"])
    assert heartbeat.heartbeat_live_workers() == {
        "short@host": ["high"],
        "long@host": ["bulk", "saga"],
    }
    time.sleep(0.5)
    assert heartbeat.heartbeat_live_workers() == {"long@host": ["bulk", "saga"]}
    # The read dropped the expired worker from both keys: nothing piles up.
    assert get_redis().zcard(heartbeat.EXPIRIES_KEY) == 1
    assert get_redis().hkeys(heartbeat.QUEUES_KEY) == [b"long@host"]


def test_a_worker_that_stops_is_gone_at_once() -> None:
    _beat("w@host", QUEUES)
    heartbeat.heartbeat_forget(client=get_redis(), hostname="w@host")
    assert heartbeat.heartbeat_live_workers() == {}


def test_every_worker_gets_the_heartbeat_step() -> None:
    # OpsConfig.ready() adds it; a worker sets Django up before it builds its consumer.
    assert heartbeat.WorkerHeartbeat in celery_app.steps["consumer"]


@pytest.mark.django_db
def test_readyz_counts_live_heartbeats_and_names_queues_nobody_consumes() -> None:
    client = Client()
    _beat("main@host", [q for q in QUEUES if q != SAGA_QUEUE])
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["workers"] == 1
    assert body["queues_without_consumer"] == [SAGA_QUEUE]
    assert body["failing"] == ["workers"]
    assert body["reasons"] == {"workers": f"no live worker consumes {SAGA_QUEUE}"}

    _beat("saga@host", [SAGA_QUEUE])
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"database": "ok", "redis": "ok", "broker": "ok", "workers": 2}


@pytest.mark.django_db
def test_readyz_without_heartbeats_names_workers_and_why() -> None:
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["workers"] == 0
    assert body["failing"] == ["workers"]
    assert body["queues_without_consumer"] == list(QUEUES)
    assert body["reasons"]["workers"].startswith("no worker heartbeat in the last")


def _database_gone(request: HttpRequest) -> HttpResponse:
    raise OperationalError("server closed the connection unexpectedly")


urlpatterns = [path("page/", _database_gone), path("api/thing/", _database_gone)]


@override_settings(ROOT_URLCONF=__name__)
@pytest.mark.parametrize("url", ["/page/", "/api/thing/"])
def test_a_database_that_does_not_answer_is_a_json_503_on_any_path(url: str) -> None:
    response = Client(raise_request_exception=False).get(url)
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response["Retry-After"] == "1"
