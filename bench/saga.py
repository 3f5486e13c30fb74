"""Saga engine cost per checkout: what one `tok_ok` order costs the runner (statements and
CPU, in this process, no Celery), and how fast the saga worker drains a queue of them on
its own, with the CPU each process spent per order (from /proc, so PostgreSQL counts)."""

from __future__ import annotations

import collections
import os
import signal
import time
from typing import Any

from config.devservices import stop_children

from .orders import _confirm_latencies, _gateway, _last_order_id, _wait_terminal
from .stack import Stack

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of every live process on the box, by role."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline") as cmd:
                fields, argv = stat.read().rsplit(")", 1)[1].split(), cmd.read()
        except OSError:
            continue
        if "postgres" in argv:
            role = "PostgreSQL"
        elif "celery" in argv:
            role = "saga worker" if "-Q\0saga" in argv else "other workers"
        elif "fake_gateway" in argv:
            role = "fake gateway"
        elif "redis" in argv:
            role = "Redis"
        else:
            role = "everything else"
        seconds[role] += (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def _box_busy() -> float:
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def _place(count: int) -> None:
    from django.contrib.auth import get_user_model

    from apps.orders.models import Product
    from apps.orders.services import Line, order_place

    user = get_user_model().objects.get_or_create(username="bench-saga")[0]
    product = Product.objects.create(name="bench-saga", price="9.90", stock_on_hand=10_000_000)
    for _ in range(count):
        order_place(
            user_id=user.pk, lines=[Line(product.pk, 1)], coupon_id=None, payment_token="tok_ok"
        )


def _inline(count: int) -> tuple[float, float, dict[str, float]]:
    """Runs `count` placed orders' sagas here, one turn each: (CPU ms per order, statements
    per order, statements per order by kind)."""
    from django.db import connection

    from apps.orders.models import Order
    from tasks.models import Saga
    from tasks.saga import saga_advance

    start = _last_order_id()
    _place(count)
    refs = [f"order:{pk}" for pk in Order.objects.filter(pk__gt=start).values_list("pk", flat=True)]
    saga_ids = list(Saga.objects.filter(ref__in=refs).values_list("pk", flat=True))
    kinds: collections.Counter[str] = collections.Counter()

    def count_statement(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        kinds[sql.split(None, 1)[0].upper()] += 1
        return execute(sql, params, many, context)

    cpu = time.process_time()
    with connection.execute_wrapper(count_statement):
        for saga_id in saga_ids:
            saga_advance(saga_id=saga_id, budget=30)
    cpu = time.process_time() - cpu
    done = Order.objects.filter(pk__gt=start, status="confirmed").count()
    if done != count:
        raise RuntimeError(f"inline: {done} of {count} orders confirmed")
    per_kind = {kind: n / count for kind, n in kinds.most_common()}
    return cpu / count * 1000, sum(kinds.values()) / count, per_kind


def run(*, orders: int = 1500) -> str:
    gateway, url = _gateway(0)
    try:
        with Stack(
            worker_procs=1, worker_concurrency=4, extra_env={"PAYMENT_GATEWAY_URL": url}
        ) as stack:
            os.environ["PAYMENT_GATEWAY_URL"] = url  # this process runs steps too (part 1)
            stack.django()
            saga_workers = [p.pid for p in stack.procs if "saga" in str(p.args)]
            for pid in saga_workers:
                os.killpg(pid, signal.SIGSTOP)
            # 1. The runner alone, in this process (the worker is stopped; the advance
            # messages the orders publish are dropped before it resumes).
            inline_ms, statements, kinds = _inline(min(orders, 300))
            stack.flush_redis_queues()
            # 2. The saga worker alone: a queue of orders, then the time to confirm them all.
            start = _last_order_id()
            _place(orders)
            time.sleep(1)  # the placing process's relay has published every advance
            cpu_before, busy_before, began = _cpu_by_process(), _box_busy(), time.monotonic()
            for pid in saga_workers:
                os.killpg(pid, signal.SIGCONT)
            _wait_terminal(start)
            elapsed = time.monotonic() - began
            busy, cpu_after = _box_busy() - busy_before, _cpu_by_process()
            _, _, confirmed = _confirm_latencies(start)
    finally:
        stop_children([gateway])
    cores = os.cpu_count() or 1
    lines = [
        f"tok_ok, fake gateway answering at once; saga worker 1 x {stack.saga_concurrency} "
        f"threads (nice {stack.worker_nice}); {cores} cores",
        "",
        "| measure | value |",
        "|---|---|",
        f"| runner in one process, no Celery: CPU per order | {inline_ms:.1f} ms |",
        f"| runner: statements per order (+ one commit per transaction) | {statements:.0f} "
        f"({', '.join(f'{k} {v:.0f}' for k, v in kinds.items())}) |",
        f"| saga worker alone: {orders:,} queued orders confirmed | {confirmed:,} in "
        f"{elapsed:.1f} s = {orders / elapsed:,.0f} orders/s |",
        f"| box CPU per order (all processes) | {busy / orders * 1000:.1f} ms "
        f"({busy / elapsed / cores:.0%} of the box busy) |",
    ]
    for role in sorted(cpu_after, key=lambda r: cpu_before.get(r, 0.0) - cpu_after[r]):
        spent = cpu_after[role] - cpu_before.get(role, 0.0)
        if spent > 0.05:
            lines.append(f"| - of which {role} | {spent / orders * 1000:.1f} ms |")
    return "\n".join(lines)
