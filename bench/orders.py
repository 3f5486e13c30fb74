"""Orders: confirmed orders/s end to end, accept -> confirmed latency, and the accept
latency with a slow gateway against a synchronous checkout."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time

import requests

from config.devservices import free_port, start_child, stop_children

from .loadgen import LoadResult, format_table, run_load
from .stack import BIN, LOG_DIR, ROOT, Stack

SYNC_PATH = "/api/bench/orders/synchronous/"


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


def _gateway(delay_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, FAKE_GATEWAY_DELAY_MS=str(delay_ms))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    proc = start_child(
        [str(BIN / "python"), "-m", "apps.orders.fake_gateway",
         "--host", "127.0.0.1", "--port", str(port)],
        output=LOG_DIR / "gateway.log", env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("gateway did not start")


def _orders_done(after_id: int) -> tuple[int, int]:
    from apps.orders.models import Order

    orders = Order.objects.filter(pk__gt=after_id)
    return orders.count(), orders.exclude(status__in=("confirmed", "failed", "cancelled")).count()


def _confirm_latencies(after_id: int) -> tuple[list[float], float, int]:
    """accept -> confirmed per order (ms, database clock) and confirmed/s over the run."""
    from apps.orders.models import Order

    rows = list(
        Order.objects.filter(pk__gt=after_id, status="confirmed").values_list(
            "created_at", "updated_at"
        )
    )
    if not rows:
        return [], 0.0, 0
    latencies = [(done - made).total_seconds() * 1000 for made, done in rows]
    span = (max(d for _, d in rows) - min(m for m, _ in rows)).total_seconds()
    return latencies, len(rows) / span if span else 0.0, len(rows)


def _wait_terminal(after_id: int, timeout: float = 300) -> float:
    """Waits until every order after `after_id` is terminal; returns the seconds waited."""
    from django.db import connection

    from config.celery import app

    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        _, pending = _orders_done(after_id)
        if not pending:
            break
        app.send_task("tasks.saga_wake")  # what beat does
        time.sleep(0.5)
    connection.close()
    return time.monotonic() - started


def _last_order_id() -> int:
    from apps.orders.models import Order

    return Order.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _scenario(
    stack: Stack,
    *,
    name: str,
    token: str,
    rate: float | None,
    duration: float,
    headers: list[dict[str, str]],
    product_id: int,
    path: str = "/api/orders/",
    warmup: float = 1.0,
) -> LoadResult:
    body = json.dumps(
        {"items": [{"product_id": product_id, "quantity": 1}], "payment_token": token}
    )
    return run_load(
        name=name, url=f"{stack.web_url}{path}", method="POST", header_sets=headers,
        body=body.encode(), duration_s=duration, concurrency=64, rate=rate, warmup_s=warmup,
    )  # fmt: skip


def run(*, duration: float = 10.0, rate: float = 200.0) -> str:
    fast_gateway, fast_url = _gateway(0)
    slow_gateway, slow_url = _gateway(200)
    try:
        return _run(duration=duration, rate=rate, fast_url=fast_url, slow_url=slow_url)
    finally:
        stop_children([fast_gateway, slow_gateway])


def _prepare(stack: Stack, product_name: str) -> functools.partial[LoadResult]:
    """Tokens and a well-stocked product on `stack`; returns `_scenario` bound to them."""
    stack.django()
    from apps.orders.models import Product

    headers = [
        {"Authorization": f"Token {t}", "Content-Type": "application/json"}
        for t in stack.tokens(50)
    ]
    product = Product.objects.create(name=product_name, price="9.90", stock_on_hand=10_000_000)
    return functools.partial(_scenario, stack, headers=headers, product_id=product.pk)


def _run(*, duration: float, rate: float, fast_url: str, slow_url: str) -> str:
    lines: list[str] = []
    # 1. tok_ok, 0 ms gateway: confirmed orders/s and accept -> confirmed at `rate` offered.
    with Stack(
        worker_procs=1, worker_concurrency=4, extra_env={"PAYMENT_GATEWAY_URL": fast_url}
    ) as stack:
        scenario = _prepare(stack, "bench")
        start = _last_order_id()
        accept = scenario(
            name=f"POST /api/orders/ tok_ok at {rate:.0f}/s", token="tok_ok", rate=rate,
            duration=duration,
        )  # fmt: skip
        _wait_terminal(start)
        latencies, confirmed_rate, confirmed = _confirm_latencies(start)
        start = _last_order_id()
        burst = scenario(
            name="POST /api/orders/ tok_ok closed loop c=64", token="tok_ok", rate=None,
            duration=duration,
        )  # fmt: skip
        _wait_terminal(start)
        _, burst_confirmed_rate, burst_confirmed = _confirm_latencies(start)
        # The accept path's own ceiling on this box: the same closed loop with every
        # worker stopped, so the web tier (and PostgreSQL) have both cores to themselves.
        start = _last_order_id()
        with stack.workers_paused():
            accept_only = scenario(
                name="POST /api/orders/ tok_ok closed loop c=64, workers stopped",
                token="tok_ok", rate=None, duration=duration,
            )  # fmt: skip
        _wait_terminal(start)
    # 2. tok_slow (200 ms gateway): the saga's accept vs a synchronous checkout.
    with Stack(
        worker_procs=1, worker_concurrency=4, extra_env={"PAYMENT_GATEWAY_URL": slow_url}
    ) as stack:
        scenario = _prepare(stack, "bench-slow")
        start = _last_order_id()
        slow = scenario(
            name=f"POST /api/orders/ tok_slow at {rate:.0f}/s", token="tok_slow", rate=rate,
            duration=duration,
        )  # fmt: skip
        slow_drain = _wait_terminal(start)
        _, slow_confirmed_rate, slow_confirmed = _confirm_latencies(start)
        # The synchronous checkout holds a web worker for both gateway calls (~400 ms), so
        # gunicorn's 3 workers serve ~7/s at most. First at a rate it can serve (its own
        # latency), then at `rate`. No warmup there: requests that wait for the 5 s timeout
        # would otherwise all be slots of the warmup second and the row would read empty.
        sync_easy = scenario(
            name="synchronous checkout tok_slow at 5/s", token="tok_slow", rate=5.0,
            duration=duration, path=SYNC_PATH,
        )  # fmt: skip
        sync = scenario(
            name=f"synchronous checkout tok_slow at {rate:.0f}/s (no warmup)", token="tok_slow",
            rate=rate, duration=duration, path=SYNC_PATH, warmup=0.0,
        )  # fmt: skip
    rows = [accept, burst, accept_only, slow, sync_easy, sync]
    lines += [
        f"gunicorn x{stack.web_workers}; worker 1 x 4 prefork, saga worker 1 x 16 threads "
        "(both nice 10); "
        "fake gateway 0 ms / 200 ms",
        "",
        format_table(
            rows,
            extra_cols={
                "answers": [
                    " ".join(f"{k}:{v}" for k, v in sorted(r.status_counts.items())) or "none"
                    for r in rows
                ],
                "socket errors": [
                    " ".join(f"{k}:{v}" for k, v in r.socket_errors.items() if v) or "-"
                    for r in rows
                ],
                "dropped": [str(r.dropped) for r in rows],
            },
        ),
        "",
        "| measure | value |",
        "|---|---|",
        f"| confirmed orders/s, tok_ok at {rate:.0f}/s offered | {confirmed_rate:,.0f} "
        f"({confirmed} confirmed) |",
        f"| accept -> confirmed, tok_ok at {rate:.0f}/s offered | "
        f"p50 {_pct(latencies, 50):,.0f} ms, p99 {_pct(latencies, 99):,.0f} ms |",
        f"| confirmed orders/s, tok_ok closed loop c=64 | {burst_confirmed_rate:,.0f} "
        f"({burst_confirmed} confirmed) |",
        f"| confirmed orders/s, tok_slow at {rate:.0f}/s offered | {slow_confirmed_rate:,.0f} "
        f"({slow_confirmed} confirmed; drained {slow_drain:.0f} s after the load) |",
    ]
    return "\n".join(lines)
