"""Wallets: how fast the ordered applier decides transactions, and how long one waits from
its 202 to its decision under a steady offered load.

Rows:
- backlog drain: `backlog` transactions stored pending over `wallets` wallets (inserted
  directly, so no accept woke anything), then the sweeper's wake (`wallets_sweep`: one
  `wallets.drain` message, as after an outage); decided/s from the wake to the last
  decision.
- open loop: `rate` POSTs/s offered over HTTP, spread evenly over the wallets, for
  `duration` s, by wrk paced with its `delay()` hook (`run_load(requests=..., rate=...,
  prefer="wrk")`: one rotation over every wallet's URL and a mix of bodies); accept ->
  applied from the database's own timestamps (`accepted_at`: the accepting transaction's
  start, `applied_at`: the applier's decision), after the queue drained.
- accept path alone: the same requests, closed loop, with the Celery workers stopped
  (SIGSTOP) so the web processes and PostgreSQL have the box to themselves: the ceiling of
  accepted/s on this machine whatever the appliers cost. The workers resume afterwards
  and decide the backlog before the stack stops.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import Any

from .loadgen import LoadResult, Request, run_load
from .stack import Stack

__all__ = ["run"]

WORKER_PROCS = 2
WORKER_CONCURRENCY = 2
# Connections wrk may hold open: the cap on requests in flight while it paces.
OPEN_LOOP_CONNECTIONS = 64
ACCEPT_ONLY_CONNECTIONS = 16


def _accept_only(stack: Stack, token: str, wallet_ids: list[int], *, duration: float) -> LoadResult:
    """Closed loop over the wallets' URLs while the Celery workers are stopped."""
    workers = stack.procs[1:]  # the stack's own worker process groups (see Stack.__enter__)
    for proc in workers:
        os.killpg(proc.pid, signal.SIGSTOP)
    try:
        return _open_loop(stack, token, wallet_ids, rate=None, duration=duration)
    finally:
        for proc in workers:
            os.killpg(proc.pid, signal.SIGCONT)


def _open_wallets(count: int) -> tuple[str, list[int]]:
    """One user with an API token and `count` fresh wallets."""
    import uuid

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.wallets import services

    user = get_user_model().objects.create(username=f"wb-{uuid.uuid4().hex[:10]}", password="!")
    token = Token.objects.create(user=user).key
    return token, [services.wallet_create(owner_id=user.pk).pk for _ in range(count)]


def _all_decided(wallet_ids: list[int]) -> bool:
    from django.db.models import F

    from apps.wallets.models import Wallet

    return not Wallet.objects.filter(pk__in=wallet_ids, last_applied_seq__lt=F("last_seq")).exists()


def _wait_decided(wallet_ids: list[int], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not _all_decided(wallet_ids):
        if time.monotonic() > deadline:
            raise RuntimeError("wallets: transactions still pending after the timeout")
        time.sleep(0.05)


def _drain_backlog(wallet_ids: list[int], per_wallet: int, rng: random.Random) -> dict[str, Any]:
    from decimal import Decimal

    from django.db import transaction
    from django.db.models import F

    from apps.wallets.models import Wallet, WalletTransaction

    kinds = [WalletTransaction.Kind.DEPOSIT, WalletTransaction.Kind.WITHDRAWAL]
    with transaction.atomic():
        WalletTransaction.objects.bulk_create(
            (
                WalletTransaction(
                    wallet_id=wallet_id,
                    seq=seq,
                    kind=rng.choice(kinds),
                    amount=Decimal(rng.randint(100, 5000)) / 100,
                )
                for wallet_id in wallet_ids
                for seq in range(1, per_wallet + 1)
            ),
            batch_size=5000,
        )
        Wallet.objects.filter(pk__in=wallet_ids).update(last_seq=F("last_seq") + per_wallet)
    from apps.wallets.services import DRAIN, wallets_sweep

    DRAIN.clear()  # a lease left by an earlier run
    started = time.perf_counter()
    if not wallets_sweep():
        raise RuntimeError("wallets: the sweeper did not wake a drain")
    _wait_decided(wallet_ids)
    decided_s = time.perf_counter() - started
    total = len(wallet_ids) * per_wallet
    return {"total": total, "decided_s": decided_s, "decided_rate": total / decided_s}


def _open_loop(
    stack: Stack, token: str, wallet_ids: list[int], *, rate: float | None, duration: float
) -> LoadResult:
    """`rate` POSTs/s over all wallets from wrk, paced; each wallet gets rate / wallets.
    Without `rate`: closed loop, as fast as the server answers."""
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    # Deposits outweigh withdrawals, and some withdrawals are too large: both outcomes.
    bodies = [
        json.dumps({"kind": kind, "amount": amount}).encode()
        for kind, amount in [
            ("deposit", "20.00"),
            ("withdrawal", "5.00"),
            ("deposit", "7.50"),
            ("withdrawal", "40.00"),
            ("deposit", "1.25"),
        ]
    ]
    # Wallets vary fastest, so consecutive requests (and each wrk thread's share) spread
    # over all wallets, and every wallet walks through every body.
    requests = [
        Request(f"/api/wallets/{wallet_id}/transactions/", "POST", body=body)
        for body in bodies
        for wallet_id in wallet_ids
    ]
    return run_load(
        name="wallets open loop",
        url=stack.web_url,
        headers=headers,
        requests=requests,
        concurrency=OPEN_LOOP_CONNECTIONS if rate else ACCEPT_ONLY_CONNECTIONS,
        duration_s=duration,
        warmup_s=1.0,
        rate=rate,
        prefer="wrk",
    )


def _latencies(after_id: int) -> dict[str, float]:
    """accept -> applied of every transaction newer than `after_id`, in ms, from the DB."""
    from django.db import connection

    from apps.wallets.models import WalletTransaction

    table = WalletTransaction._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*),
                   count(*) FILTER (WHERE status = 'rejected'),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                   max(ms),
                   extract(epoch FROM max(applied_at) - min(accepted_at))
            FROM (
                SELECT status, applied_at, accepted_at,
                       extract(epoch FROM applied_at - accepted_at) * 1000 AS ms
                FROM {table} WHERE id > %s
            ) AS t
            """,
            [after_id],
        )
        count, rejected, p50, p99, worst, span = cursor.fetchone()
    return {
        "count": int(count),
        "rejected": int(rejected),
        "p50": float(p50 or 0),
        "p99": float(p99 or 0),
        "max": float(worst or 0),
        "span_s": float(span or 0),
    }


def run(
    *,
    duration: float = 10.0,
    rate: float = 500.0,
    wallets: int = 100,
    backlog: int = 50_000,
    seed: int = 1,
) -> str:
    rng = random.Random(seed)
    with Stack(worker_procs=WORKER_PROCS, worker_concurrency=WORKER_CONCURRENCY) as stack:
        stack.django()
        from django.db.models import Max

        from apps.wallets.models import WalletTransaction
        from apps.wallets.services import APPLY_BATCH_SIZE
        from config.celery import app

        app.conf.broker_url = stack.env["REDIS_URL"]

        token, drain_wallets = _open_wallets(wallets)
        drain = _drain_backlog(drain_wallets, max(1, backlog // wallets), rng)

        token, load_wallets = _open_wallets(wallets)
        before = WalletTransaction.objects.aggregate(last=Max("id"))["last"] or 0
        started = time.perf_counter()
        result = _open_loop(stack, token, load_wallets, rate=rate, duration=duration)
        _wait_decided(load_wallets)
        tail_s = time.perf_counter() - started - duration - 1.0
        latency = _latencies(before)

        token, alone_wallets = _open_wallets(wallets)
        alone = _accept_only(stack, token, alone_wallets, duration=duration)
        _wait_decided(alone_wallets)

        accepted = result.status_counts.get(202, 0)
        sent = result.requests + sum(result.socket_errors.values())
        lines = [
            f"gunicorn x{stack.web_workers} sync, workers {WORKER_PROCS} x "
            f"{WORKER_CONCURRENCY}, {wallets} wallets, wrk paced over all wallets' URLs "
            f"({result.concurrency} connections)",
            "",
            "| measure | value | detail |",
            "|---|---|---|",
            f"| backlog drain: decided/s | {drain['decided_rate']:,.0f} | "
            f"{drain['total']:,} pending over {wallets} wallets, one drain woken by the "
            f"sweeper, batches of {APPLY_BATCH_SIZE} per wallet; all decided in "
            f"{drain['decided_s']:.2f} s |",
            f"| open loop: offered | {rate:,.0f}/s | {result.duration_s:.0f} s after a 1 s "
            f"warm-up, {rate / wallets:.1f}/s per wallet |",
            f"| open loop: sent | {sent / result.duration_s:,.0f}/s | {result.late:,} sent more "
            f"than 10 ms after their slot (no free connection), {result.dropped:,} never sent |",
            f"| open loop: accepted (202) | {accepted / result.duration_s:,.0f}/s | "
            f"{accepted:,} in the window, {result.errors} errors |",
            f"| open loop: HTTP latency (from the send) | p50 {result.p50_ms:.1f} ms | "
            f"p99 {result.p99_ms:.1f} ms |",
            f"| open loop: applied/s | {latency['count'] / latency['span_s']:,.0f} | "
            f"{latency['count']:,} decided incl. warm-up ({latency['rejected']:,} rejected) "
            f"over {latency['span_s']:.1f} s, first accept to last decision |",
            f"| open loop: accept -> applied | p50 {latency['p50']:.1f} ms | "
            f"p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms; last decided "
            f"{max(tail_s, 0) * 1000:,.0f} ms after the load ended |",
            f"| accept path alone (workers stopped) | {alone.rps:,.0f}/s | closed loop, "
            f"{alone.concurrency} connections, p50 {alone.p50_ms:.1f} ms, p99 "
            f"{alone.p99_ms:.1f} ms, {alone.errors} errors |",
        ]
        return "\n".join(lines)


if __name__ == "__main__":
    print(run())
