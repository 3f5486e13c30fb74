"""The payment steps are remote steps: while the gateway takes its time, no Surge connection
sits idle in transaction (holding its connection, and maybe a row lock, for the call)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from django.db import connection, transaction

from apps.orders.models import Order

from ..harness import LiveProcess
from .conftest import SLOW_GATEWAY_DELAY_MS
from .test_checkout_live import drain, make_products, make_users, place_all

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# Half the gateway's delay: a transaction open across a call idles at least the whole delay.
BOUND_S = SLOW_GATEWAY_DELAY_MS / 1000 / 2

_IDLE_IN_TRANSACTION = (
    "SELECT pid, EXTRACT(EPOCH FROM clock_timestamp() - state_change)::float, "
    "left(query, 200) FROM pg_stat_activity WHERE datname = current_database() "
    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
)


class IdleProbe(threading.Thread):
    """Samples pg_stat_activity (this test database's backends) every 20 ms until stopped,
    keeping the longest idle-in-transaction spell seen per backend."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.longest: dict[int, tuple[float, str]] = {}
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:  # this thread's own connection (autocommit)
                while not self.stopped.is_set():
                    cursor.execute(_IDLE_IN_TRANSACTION)
                    for pid, seconds, query in cursor.fetchall():
                        if seconds > self.longest.get(pid, (0.0, ""))[0]:
                            self.longest[pid] = (seconds, query)
                    self.samples += 1
                    time.sleep(0.02)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)

    def over(self, bound: float) -> dict[int, tuple[float, str]]:
        return {pid: spell for pid, spell in self.longest.items() if spell[0] > bound}


def hold_idle_in_transaction(seconds: float) -> int:
    """The control: a connection of this process idles in an open transaction for
    `seconds`, as a step that queried before its HTTP call would. Returns its pid."""
    pids: list[int] = []

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
                time.sleep(seconds)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    thread.join()
    return pids[0]


def test_no_connection_idles_in_transaction_during_slow_payment_calls(
    live_web: LiveProcess,
    live_worker: LiveProcess,
    slow_gateway: str,
    worker_pool: Any,
) -> None:
    # The workers as the Procfile runs them, the saga threads calling the slow gateway.
    live_worker.stop()
    worker_pool(1, queues="high,default,bulk")
    slow = {"PAYMENT_GATEWAY_URL": slow_gateway, "PAYMENT_GATEWAY_TIMEOUT_S": "5"}
    worker_pool(1, queues="saga", pool="threads", concurrency=8, env=slow)
    requests.post(f"{slow_gateway}/v1/control/reset", timeout=5)
    products, _ = make_products([100])
    users = make_users(4)
    line = [{"product_id": products[0].pk, "quantity": 1}]
    bodies = [
        (users[i % len(users)][1], {"items": line, "payment_token": "tok_slow"}) for i in range(24)
    ]

    probe = IdleProbe()
    probe.start()
    try:
        control = hold_idle_in_transaction(2 * BOUND_S)
        started = time.monotonic()
        ids = place_all(live_web.url or "", bodies)
        drain(ids, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        probe.stop()

    # The probe sees a connection held idle in transaction (so it would see one of ours)...
    assert control in probe.over(BOUND_S), probe.longest
    # ...and it sampled all along the storm, while the gateway held every call.
    assert elapsed >= 2 * SLOW_GATEWAY_DELAY_MS / 1000
    assert probe.samples >= elapsed / 0.1
    # No Surge process (web, workers) held one for long: the calls ran outside transactions.
    held = {pid: spell for pid, spell in probe.over(BOUND_S).items() if pid != control}
    assert held == {}
    statuses = Order.objects.filter(pk__in=ids).values_list("status", "failure_reason")
    assert set(statuses) == {("confirmed", "")}
    stats = requests.get(f"{slow_gateway}/v1/stats", timeout=5).json()
    assert stats["captured"]["count"] == len(ids)
