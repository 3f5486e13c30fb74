"""The broker transport (tasks/broker.py) against the real Redis: one client per pool,
rebuilt with the pool, and messages still go through when Redis drops its connections."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from config.celery import app
from tasks.broker import Channel


@pytest.fixture
def conn() -> Iterator[Connection]:
    with app.connection_for_write() as connection:
        yield connection


def test_the_apps_redis_url_selects_the_shared_client_channel(conn: Connection) -> None:
    assert conn.as_uri().startswith("redis://")  # what Flower and the worker banner show
    assert isinstance(conn.default_channel, Channel)


def test_writes_share_one_client_until_the_pool_is_dropped(conn: Connection) -> None:
    channel: Any = conn.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        pool = first.connection_pool
    assert pool is channel.pool

    channel._after_fork()  # what kombu does in a forked child: drop the pools
    with channel.conn_or_acquire() as after:
        assert after is not first
        assert after.connection_pool is channel.pool is not pool
        assert after.ping()


def test_messages_flow_from_many_threads_and_after_redis_drops_the_connections(
    conn: Connection, private_redis: Any
) -> None:
    name = f"test-broker-{uuid.uuid4().hex}"
    queue = conn.SimpleQueue(name)
    try:
        errors: list[BaseException] = []

        def put(start: int) -> None:
            try:
                for n in range(start, start + 50):
                    queue.put({"n": n})
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=put, args=(k * 50,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors

        # Redis closes the shared client's connections (as on a restart); its pool
        # reconnects on the next write.
        channel: Any = conn.default_channel
        with channel.conn_or_acquire() as shared:
            pool = shared.connection_pool
        local = [c._sock.getsockname() for c in pool._available_connections if c._sock]
        assert local
        admin = redis.Redis.from_url(private_redis.url)
        for host, port in local:
            assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
        queue.put({"n": 200})

        seen = []
        for _ in range(201):
            message = queue.get(timeout=5)
            seen.append(message.payload["n"])
            message.ack()
        assert sorted(seen) == list(range(201))
    finally:
        queue.clear()
        queue.close()
