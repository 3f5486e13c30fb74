"""/readyz from the outside, as a load balancer asks it (issue 19): worker heartbeats, a
queue nobody consumes, and a Redis or PostgreSQL restart with the stack running."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import requests

from config.celery import QUEUES, SAGA_QUEUE
from config.devservices import EmbeddedPostgres
from tasks.models import OutboxMessage
from tests.toolkit_app.models import ProbeConnection

from ..conftest import HEARTBEAT_TTL_S, LOG_DIR
from ..harness import (
    ApiClient,
    LiveProcess,
    beat_argv,
    free_port,
    gunicorn_argv,
    http_ready,
    wait_for,
    worker_argv,
    worker_ready,
)

pytestmark = pytest.mark.live

REDIS_URL_VARIABLES = ("REDIS_URL", "CACHE_REDIS_URL", "CHANNELS_REDIS_URL", "CELERY_BROKER_URL")


def _readyz(base_url: str) -> requests.Response:
    return requests.get(f"{base_url}/readyz", timeout=10)


class _NotYet(list[dict[str, Any]]):
    """Empty, so falsy for wait_for, and shows the last answer when the wait times out."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def __repr__(self) -> str:
        return f"last answer {self.answer}"


def _answer_with(
    base_url: str, status: int, workers: int | None = None
) -> Callable[[], list[dict[str, Any]]]:
    """A wait_for condition: [the body] once /readyz answers `status` (and `workers`)."""

    def check() -> list[dict[str, Any]]:
        try:
            response = _readyz(base_url)
        except requests.RequestException as exc:
            return _NotYet(repr(exc))
        body = response.json()
        if response.status_code == status and workers in (None, body["workers"]):
            return [body]
        return _NotYet(f"{response.status_code} {response.text}")

    return check


def test_a_queue_without_a_live_consumer_is_not_ready(
    live_web: LiveProcess,
    live_worker: LiveProcess,
    worker_pool: Callable[..., list[LiveProcess]],
) -> None:
    url = live_web.url or ""
    live_worker.stop()  # the Procfile's split instead: one worker for saga, one for the rest
    (saga_worker,) = worker_pool(1, queues=SAGA_QUEUE, pool="threads", concurrency=2)
    (worker,) = worker_pool(1, queues="high,default,bulk")
    (body,) = wait_for(_answer_with(url, 200), timeout=HEARTBEAT_TTL_S + 3, what="ready")
    assert body["workers"] == 2

    # Cheap enough to poll every second: one script call, no wait for replies (a ping
    # broadcast made every call wait out its whole 1 s timeout).
    took = []
    for _ in range(10):
        started = time.perf_counter()
        assert _readyz(url).status_code == 200
        took.append(time.perf_counter() - started)
    assert max(took) < 1.0 and statistics.median(took) < 0.3, took

    # A worker that stops leaves at once; only its queue is named.
    saga_worker.stop()
    (body,) = wait_for(_answer_with(url, 503), timeout=HEARTBEAT_TTL_S, what="503 naming saga")
    assert body["queues_without_consumer"] == [SAGA_QUEUE]
    assert body["failing"] == ["workers"]
    assert body["workers"] == 1
    assert SAGA_QUEUE in body["reasons"]["workers"]

    saga_worker.start()
    wait_for(_answer_with(url, 200), timeout=HEARTBEAT_TTL_S, what="ready with saga back")

    # A killed worker says nothing: it is gone once its last beat is TTL old.
    killed_at = time.monotonic()
    saga_worker.kill()
    worker.kill()
    (body,) = wait_for(
        _answer_with(url, 503, workers=0),
        timeout=HEARTBEAT_TTL_S + 2,
        interval=0.2,
        what="503 naming workers",
    )
    assert time.monotonic() - killed_at < HEARTBEAT_TTL_S + 2
    assert body["failing"] == ["workers"]
    assert body["workers"] == 0
    assert body["queues_without_consumer"] == list(QUEUES)
    assert body["reasons"]["workers"].startswith("no worker heartbeat")


class _Load:
    """Light, steady background work for the workers: one wallet deposit every 50 ms; each
    202 must become applied, so the workers' consuming is checked, not just their beats."""

    def __init__(self, api: ApiClient) -> None:
        self.client = api.register()
        self.wallet = self.client.post("/api/wallets/").json()["id"]
        self.accepted = 0
        self.other: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                response = self.client.post(
                    f"/api/wallets/{self.wallet}/transactions/",
                    {"kind": "deposit", "amount": "1.00"},
                    timeout=5,
                )
            except requests.RequestException:
                continue
            if response.status_code == 202:
                self.accepted += 1
            else:
                self.other.append(response.status_code)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def balance(self) -> str:
        return str(self.client.get(f"/api/wallets/{self.wallet}/").json()["balance"])


def test_ready_through_a_redis_restart_while_workers_are_busy(
    api: ApiClient, live_web: LiveProcess, live_worker: LiveProcess, redis_restart: Any
) -> None:
    url = live_web.url or ""
    wait_for(_answer_with(url, 200), timeout=HEARTBEAT_TTL_S + 3, what="ready before")
    with _Load(api) as load:
        time.sleep(2)
        redis_restart()
        restarted = time.monotonic()
        wait_for(_answer_with(url, 200), timeout=15, interval=0.5, what="ready after restart")
        assert time.monotonic() - restarted < 15
        answers = []
        for _ in range(60):
            next_poll = time.monotonic() + 1
            response = _readyz(url)
            answers.append((response.status_code, response.text))
            time.sleep(max(0.0, next_poll - time.monotonic()))
    assert [text for status, text in answers if status != 200] == []
    # The workers kept consuming: every accepted deposit is applied.
    assert load.accepted > 100, load.other
    wait_for(
        lambda: load.balance() == f"{load.accepted}.00",
        timeout=60,
        interval=0.5,
        what=f"{load.accepted} deposits applied",
    )


@pytest.fixture
def stack_on_private_postgres(
    live_env: dict[str, str], private_postgres: tuple[EmbeddedPostgres, str]
) -> Iterator[tuple[str, EmbeddedPostgres, str]]:
    """(web URL, server, database URL): web, a worker and beat on a PostgreSQL server that
    the test may restart."""
    server, database_url = private_postgres
    # A Redis database of their own too: the session's worker must not take their tasks.
    redis_url = live_env["REDIS_URL"].rsplit("/", 1)[0] + "/1"
    env = live_env | {"DATABASE_URL": database_url} | dict.fromkeys(REDIS_URL_VARIABLES, redis_url)
    port = free_port()
    processes = [
        LiveProcess(
            "pg-web",
            gunicorn_argv(port),
            env=env,
            log_dir=LOG_DIR,
            url=f"http://127.0.0.1:{port}",
            ready=lambda p: http_ready(f"{p.url}/healthz"),
        ),
        LiveProcess(
            "pg-worker", worker_argv("pg-worker"), env=env, log_dir=LOG_DIR, ready=worker_ready
        ),
        LiveProcess(
            "pg-beat",
            beat_argv(),
            env=env,
            log_dir=LOG_DIR,
            ready=lambda p: "beat: Starting" in p.log_text(),
        ),
    ]
    try:
        for process in processes:
            process.start()
        yield processes[0].url or "", server, database_url
    finally:
        for process in processes:
            process.stop()


class _Poller:
    """Asks the web process for a few kinds of answer, every 100 ms, and keeps each one."""

    def __init__(self, base_url: str) -> None:
        self.api = ApiClient(base_url).register()
        self.answers: list[tuple[str, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        requests_ = [
            ("readyz", lambda: self.api.get("/readyz", timeout=5)),
            ("products", lambda: self.api.get("/api/products/", timeout=5)),
            ("wallet", lambda: self.api.post("/api/wallets/", timeout=5)),
        ]
        while not self._stop.wait(0.1):
            for name, send in requests_:
                try:
                    response = send()
                except requests.RequestException as exc:
                    self.answers.append((name, 0, type(exc).__name__))
                    continue
                self.answers.append(
                    (name, response.status_code, response.headers.get("Content-Type", ""))
                )

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


def _probe_rows(database_url: str, token: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {ProbeConnection._meta.db_table} WHERE token = %s",
            [token],
        )
        row = cursor.fetchone()
    conn.close()
    return int(row[0]) if row else 0


def _outbox_row_only_beat_sends(database_url: str, token: str) -> None:
    """An outbox row nobody published, a minute old: only beat's `outbox-sweep` sends it."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {OutboxMessage._meta.db_table} "
            "(task_name, args, kwargs, queue, key, message_id, request_id, created_at, "
            "broker_epoch, publish_count) VALUES ('toolkit.probe_backend', %s::jsonb, "
            "'{}'::jsonb, '', NULL, '', '', clock_timestamp() - interval '1 minute', 0, 0)",
            [f'["{token}"]'],
        )
    conn.close()


def test_everything_recovers_by_itself_after_a_postgres_restart(
    stack_on_private_postgres: tuple[str, EmbeddedPostgres, str],
) -> None:
    url, server, database_url = stack_on_private_postgres
    wait_for(_answer_with(url, 200), timeout=30, interval=0.5, what="ready before")
    with _Poller(url) as poller:
        time.sleep(1)
        server.stop()  # fast shutdown: every connection of web, worker and beat breaks
        time.sleep(2)
        server.ensure_running()
        restarted = time.monotonic()
        wait_for(_answer_with(url, 200), timeout=30, interval=0.5, what="ready after restart")
        ready_after = time.monotonic() - restarted
        time.sleep(2)
    # No 500 at any time: a request that found PostgreSQL gone got a JSON 503.
    unexpected = [
        answer
        for answer in poller.answers
        if answer[1] not in (200, 201)
        and not (answer[1] == 503 and answer[2].startswith("application/json"))
    ]
    assert unexpected == [], unexpected
    assert {status for _, status, _ in poller.answers} >= {503}, "the restart went unseen"
    assert ready_after < 30

    # Requests are served again, the worker runs tasks, and beat schedules again: a
    # wallet deposit is applied, and an outbox row only beat's sweep publishes is run.
    client = ApiClient(url).register()
    wallet = client.post("/api/wallets/").json()["id"]
    response = client.post(
        f"/api/wallets/{wallet}/transactions/", {"kind": "deposit", "amount": "2.50"}
    )
    assert response.status_code == 202, response.text
    token = f"pg-restart-{uuid.uuid4().hex}"
    _outbox_row_only_beat_sends(database_url, token)
    wait_for(
        lambda: client.get(f"/api/wallets/{wallet}/").json()["balance"] == "2.50",
        timeout=30,
        what="the deposit applied",
    )
    wait_for(lambda: _probe_rows(database_url, token) == 1, timeout=30, what="beat's sweep ran")
