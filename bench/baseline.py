"""Baselines every later goal is a ratio of: HTTP no-ops by layer, and raw Celery."""

from __future__ import annotations

import time
import uuid
from typing import Any

from .loadgen import LoadResult, format_table, run_load
from .stack import Stack


def http_baselines(stack: Stack, *, duration: float, concurrency: int) -> list[LoadResult]:
    tokens = stack.tokens(200)
    auth_sets = [
        {"Authorization": f"Token {t}", "Content-Type": "application/json"} for t in tokens
    ]
    json_headers = {"Content-Type": "application/json"}
    scenarios: list[dict[str, Any]] = [
        dict(name="django no-op GET", url="/bench/noop/"),
        dict(
            name="DRF no-op POST, anonymous",
            url="/api/bench/noop/",
            method="POST",
            headers=json_headers,
            body=b"{}",
        ),
        dict(
            name="DRF no-op POST, token auth (Surge)",
            url="/api/bench/noop-auth/",
            method="POST",
            header_sets=auth_sets,
            body=b"{}",
        ),
        dict(
            name="DRF no-op POST, DRF stock TokenAuthentication",
            url="/api/bench/noop-stock-auth/",
            method="POST",
            header_sets=auth_sets,
            body=b"{}",
        ),
        dict(name="DRF one-query GET", url="/api/bench/one-query/"),
    ]
    results = []
    for scenario in scenarios:
        url = stack.web_url + scenario.pop("url")
        results.append(run_load(url=url, duration_s=duration, concurrency=concurrency, **scenario))
    return results


def celery_baselines(stack: Stack, *, tasks: int) -> list[tuple[str, str, str]]:
    """Enqueue rate, drain rate and round trip of a plain Celery task."""
    import redis

    from config.celery import app

    app.conf.broker_url = stack.env["REDIS_URL"]
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    rows: list[tuple[str, str, str]] = []

    # Enqueue: publish `tasks` no-op messages from one process over one connection.
    with app.producer_or_acquire() as producer:
        started = time.perf_counter()
        for _ in range(tasks):
            app.send_task("ops.noop", producer=producer)
        enqueue_s = time.perf_counter() - started
    rows.append(
        ("Celery enqueue (plain task)", f"{tasks / enqueue_s:,.0f} tasks/s", f"{tasks} tasks")
    )

    # Drain: tasks that each push onto a list; time until the list holds them all.
    key = f"bench:drain:{uuid.uuid4().hex}"
    client.delete("default")
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            app.send_task("ops.bench_ack", args=[key], producer=producer)
    started = time.perf_counter()
    deadline = started + 300
    while client.llen(key) < tasks and time.perf_counter() < deadline:
        time.sleep(0.01)
    drain_s = time.perf_counter() - started
    done = client.llen(key)
    rows.append(
        (
            "Celery drain (queued -> run)",
            f"{done / drain_s:,.0f} tasks/s",
            f"{done}/{tasks} tasks, {stack.worker_procs} worker x {stack.worker_concurrency}",
        )
    )
    client.delete(key)

    # Round trip: publish one, wait for its effect, one at a time.
    samples = []
    key = f"bench:rt:{uuid.uuid4().hex}"
    for _ in range(200):
        started = time.perf_counter()
        app.send_task("ops.bench_ack", args=[key])
        client.blpop([key], timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    rows.append(
        (
            "Celery round trip (publish -> effect)",
            f"p50 {samples[len(samples) // 2]:.1f} ms",
            f"p99 {samples[int(len(samples) * 0.99) - 1]:.1f} ms",
        )
    )
    return rows


def run(*, duration: float, concurrency: int, tasks: int) -> str:
    with Stack() as stack:
        http = http_baselines(stack, duration=duration, concurrency=concurrency)
        celery_rows = celery_baselines(stack, tasks=tasks)
        by_name = {r.name: r for r in http}
        anonymous = by_name["DRF no-op POST, anonymous"].rps
        ratio = [f"{r.rps / anonymous:.0%}" if anonymous else "-" for r in http]
        lines = [
            f"web: gunicorn x{stack.web_workers} sync workers, DEBUG off; "
            f"c={concurrency}, {duration:.0f} s per row",
            "",
            format_table(http, extra_cols={"vs anonymous DRF": ratio}),
            "",
            "| Celery | result | detail |",
            "|---|---|---|",
            *[f"| {a} | {b} | {c} |" for a, b, c in celery_rows],
        ]
        return "\n".join(lines)
