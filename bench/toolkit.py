"""The toolkit's costs: outbox relay vs raw publishing, publish latency after commit, and
the base task + tracing overhead on a no-op."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from .stack import Stack


def _pct(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _raw_enqueue(count: int) -> float:
    from config.celery import app

    with app.producer_or_acquire() as producer:
        started = time.perf_counter()
        for _ in range(count):
            app.send_task("ops.noop", producer=producer)
        return count / (time.perf_counter() - started)


def _raw_enqueue_pipelined(count: int, batch: int = 500) -> float:
    """Context for the relay's figure: bare send_task calls inside kombu's publish batch
    (Redis pipelines of `batch` messages), the way the relay publishes."""
    from config.celery import app

    with app.producer_or_acquire() as producer:
        started = time.perf_counter()
        for first in range(0, count, batch):
            with producer.batch(max_size=batch):
                for _ in range(min(batch, count - first)):
                    app.send_task("ops.noop", producer=producer)
        return count / (time.perf_counter() - started)


def _outbox_enqueue(count: int, per_transaction: int) -> float:
    """End to end: INSERT in a transaction, relay after commit, mark sent."""
    from django.db import transaction

    from tasks.outbox import outbox_enqueue

    started = time.perf_counter()
    for _ in range(count // per_transaction):
        with transaction.atomic():
            for _ in range(per_transaction):
                outbox_enqueue("ops.noop")
    return count / (time.perf_counter() - started)


def _relay_backlog(count: int) -> float:
    """The relay alone: publish a backlog of committed, unsent rows (what the sweeper does
    after a broker outage), in batches of 500 claimed with SKIP LOCKED."""
    from django.utils import timezone

    from tasks.models import OutboxMessage
    from tasks.outbox import outbox_sweep

    old = timezone.now() - timedelta(minutes=5)
    OutboxMessage.objects.bulk_create(
        [OutboxMessage(task_name="ops.noop", created_at=old) for _ in range(count)], batch_size=5000
    )
    started = time.perf_counter()
    published = outbox_sweep(max_batches=10_000, unsent_after=timedelta(0))
    return published / (time.perf_counter() - started)


def _publish_latency(rate: float, seconds: float) -> tuple[list[float], float]:
    """One command per transaction at a fixed rate; latency = commit + relay publish."""
    from django.db import transaction

    from tasks.outbox import outbox_enqueue

    interval = 1 / rate
    samples: list[float] = []
    next_at = time.perf_counter()
    deadline = next_at + seconds
    while next_at < deadline:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        with transaction.atomic():
            outbox_enqueue("ops.noop")
            committing = time.perf_counter()
        samples.append((time.perf_counter() - committing) * 1000)
        next_at += interval
    achieved = len(samples) / seconds
    return samples, achieved


def _drain(task_name: str, count: int, *, request_id: str | None) -> float:
    """Publish `count` acks and time until the worker has run them all."""
    import redis

    from config.celery import app
    from tasks.context import reset_request_id, set_request_id

    client = redis.Redis.from_url(app.conf.broker_url)
    key = f"bench:ack:{uuid.uuid4().hex}"
    token = set_request_id(request_id)
    try:
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(task_name, args=[key], producer=producer)
        while client.llen(key) < count and time.perf_counter() - started < 300:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        reset_request_id(token)
    done = client.llen(key)
    client.delete(key)
    return done / elapsed


def run(*, tasks: int = 5000) -> str:
    with Stack(worker_procs=1, worker_concurrency=2) as stack:
        stack.django()
        from config.celery import app

        app.conf.broker_url = stack.env["REDIS_URL"]
        # Drains first, on empty queues; then the publishing rows, whose no-op messages
        # pile up in the queue (flushed between rows so nothing waits behind them).
        plain = _drain("ops.bench_ack", tasks, request_id=None)
        surge = _drain("ops.bench_ack_surge", tasks, request_id=f"bench-{uuid.uuid4().hex}")
        raw = _raw_enqueue(tasks)
        stack.flush_redis_queues()
        raw_pipelined = _raw_enqueue_pipelined(tasks)
        stack.flush_redis_queues()
        outbox_1 = _outbox_enqueue(tasks, per_transaction=1)
        stack.flush_redis_queues()
        outbox_10 = _outbox_enqueue(tasks, per_transaction=10)
        stack.flush_redis_queues()
        relay = _relay_backlog(tasks * 2)
        stack.flush_redis_queues()
        samples, achieved = _publish_latency(rate=500, seconds=10)
        stack.flush_redis_queues()
        rows = [
            ("raw Celery publish (one producer)", f"{raw:,.0f} msg/s", "100%"),
            (
                "raw Celery publish, pipelined (kombu publish batch of 500)",
                f"{raw_pipelined:,.0f} msg/s",
                f"{raw_pipelined / raw:.0%}",
            ),
            (
                "outbox: 1 row per transaction, end to end",
                f"{outbox_1:,.0f} msg/s",
                f"{outbox_1 / raw:.0%}",
            ),
            (
                "outbox: 10 rows per transaction, end to end",
                f"{outbox_10:,.0f} msg/s",
                f"{outbox_10 / raw:.0%}",
            ),
            (
                "outbox relay alone (backlog, batches of 500)",
                f"{relay:,.0f} msg/s",
                f"{relay / raw:.0%}",
            ),
            (
                f"commit + publish latency at 500/s offered ({achieved:,.0f}/s achieved)",
                f"p50 {_pct(samples, 50):.2f} ms, p99 {_pct(samples, 99):.2f} ms",
                "",
            ),
            ("drain: plain Celery no-op", f"{plain:,.0f} tasks/s", "100%"),
            (
                "drain: SurgeTask no-op, traced (request id)",
                f"{surge:,.0f} tasks/s",
                f"{surge / plain:.0%}",
            ),
        ]
        return "\n".join(
            [
                f"{tasks:,} messages per row; worker 1 x 2 (prefork); Redis broker; PostgreSQL",
                "",
                "| measure | result | vs baseline |",
                "|---|---|---|",
                *[f"| {a} | {b} | {c} |" for a, b, c in rows],
            ]
        )
