"""Wallets on the real stack: threads hammer the HTTP API, several worker processes apply,
duplicate and shuffled deliveries are injected, a worker is SIGKILLed; the stored log must
equal a sequential model of what the API accepted. (The naive variant, fed the same kind of
input, gets it wrong: tests/lab/test_live.py.)
"""

from __future__ import annotations

import json
import queue
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import pytest
import redis
import requests
from django.db import connection, connections, transaction

from apps.wallets.models import Wallet, WalletTransaction
from apps.wallets.selectors import wallet_verify
from apps.wallets.services import DRAIN as WALLETS_DRAIN
from apps.wallets.services import DRAIN_MAX_WALLETS, DRAIN_QUEUE, DRAIN_TASK
from config.celery import app
from config.devservices import PrivateRedis

from ..harness import ApiClient, LiveProcess, wait_for
from .model import DEPOSIT, WITHDRAWAL, sequential_model, stored_decisions

pytestmark = pytest.mark.live

APPLY = "wallets.apply"
DRAIN = "wallets.drain"
THREADS = 16
# Never covered by any balance the plans can build: every wallet has a rejection.
HUGE = "999999.99"


@dataclass(frozen=True)
class Request:
    token: str
    wallet_id: int
    kind: str
    amount: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    wallet_id: int
    id: int
    seq: int
    kind: str
    amount: Decimal


def _open_wallets(base_url: str, *, users: int, per_user: int) -> list[tuple[str, int]]:
    """(token, wallet id) for `users * per_user` wallets, opened over HTTP."""
    wallets = []
    for _ in range(users):
        user = ApiClient(base_url).register()
        assert user.token
        for _ in range(per_user):
            response = user.post("/api/wallets/")
            assert response.status_code == 201, response.text
            assert response.json()["balance"] == "0.00"
            wallets.append((user.token, int(response.json()["id"])))
    return wallets


def _plan(wallets: list[tuple[str, int]], *, per_wallet: int, rng: random.Random) -> list[Request]:
    """`per_wallet` mixed transactions per wallet, ordered so that the requests in flight
    at any moment target a handful of wallets: several per wallet at once."""
    per: dict[int, list[Request]] = {}
    for token, wallet_id in wallets:
        requests_ = [Request(token, wallet_id, WITHDRAWAL, HUGE)]
        for _ in range(per_wallet - 1):
            kind = DEPOSIT if rng.random() < 0.55 else WITHDRAWAL
            key = f"k-{rng.getrandbits(64):x}" if rng.random() < 0.05 else None
            amount = f"{rng.randint(1, 6000) / 100:.2f}"
            requests_.append(Request(token, wallet_id, kind, amount, key))
        per[wallet_id] = requests_
    plan: list[Request] = []
    ids = list(per)
    for first in range(0, len(ids), 4):
        group = [r for wallet_id in ids[first : first + 4] for r in per[wallet_id]]
        rng.shuffle(group)
        plan += group
    return plan


def _submit(
    base_url: str,
    plan: list[Request],
    *,
    on_each: Callable[[], None] | None = None,
    path: str = "/api/wallets/{wallet_id}/transactions/",
) -> list[Accepted]:
    """Posts the plan from THREADS threads (a shared queue, so the plan's order holds
    roughly); requests with an Idempotency-Key are sent twice and must replay. `path` is
    where (the lab's naive variant takes the same requests elsewhere)."""
    work: queue.SimpleQueue[Request] = queue.SimpleQueue()
    for item in plan:
        work.put(item)
    accepted: list[Accepted] = []
    lock = threading.Lock()

    def run() -> None:
        session = requests.Session()
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            headers = {"Authorization": f"Token {item.token}"}
            if item.idempotency_key:
                headers["Idempotency-Key"] = item.idempotency_key
            url = base_url + path.format(wallet_id=item.wallet_id)
            body = {"kind": item.kind, "amount": item.amount}
            response = session.post(url, json=body, headers=headers, timeout=60)
            assert response.status_code == 202, response.text
            answer = response.json()
            assert answer["status"] == "pending"
            if item.idempotency_key:
                replay = session.post(url, json=body, headers=headers, timeout=60)
                assert replay.status_code == 202
                assert replay.json() == answer
                assert replay.headers["Idempotent-Replayed"] == "true"
            with lock:
                accepted.append(
                    Accepted(item.wallet_id, answer["id"], answer["seq"], item.kind,
                             Decimal(item.amount))
                )  # fmt: skip
            if on_each:
                on_each()

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(run) for _ in range(THREADS)]:
            future.result()
    assert len(accepted) == len(plan)
    return accepted


class Injector:
    """Publishes extra `wallets.apply` messages straight to the broker, for random wallets
    in random order: duplicates, and deliveries out of any order (some before the accept
    they are for has committed). A shuffled round before and after the storm, and one
    message for a random wallet after about every fifth accepted request."""

    def __init__(self, wallet_ids: list[int], rng: random.Random) -> None:
        self.wallet_ids = wallet_ids
        self.rng = rng
        self.lock = threading.Lock()
        self.published = 0

    def maybe_one(self) -> None:
        with self.lock:
            wallet_id = self.rng.choice(self.wallet_ids) if self.rng.random() < 0.2 else None
        if wallet_id is not None:
            app.send_task(APPLY, args=[wallet_id])
            self.published += 1

    def shuffled_round(self, copies: int = 2) -> None:
        deliveries = self.wallet_ids * copies
        with app.producer_or_acquire() as producer:
            for wallet_id in self.rng.sample(deliveries, len(deliveries)):
                app.send_task(APPLY, args=[wallet_id], producer=producer)
                self.published += 1


def _by_wallet(accepted: list[Accepted]) -> dict[int, list[tuple[int, str, Decimal]]]:
    by_wallet: dict[int, list[tuple[int, str, Decimal]]] = defaultdict(list)
    for item in accepted:
        by_wallet[item.wallet_id].append((item.seq, item.kind, item.amount))
    return {wallet_id: sorted(rows) for wallet_id, rows in by_wallet.items()}


def _wait_decided(
    wallet_ids: list[int], per_wallet: int, timeout: float = 90, sweep: bool = False
) -> None:
    """Waits until every transaction is decided; with `sweep`, sends beat's wallets sweep
    meanwhile (what wakes drains whose wake a lost Redis held)."""

    def decided() -> bool:
        if sweep:
            app.send_task("wallets.sweep", queue="high")
        behind = Wallet.objects.filter(pk__in=wallet_ids).exclude(last_applied_seq=per_wallet)
        pending = WalletTransaction.objects.filter(wallet_id__in=wallet_ids, status="pending")
        return not behind.exists() and not pending.exists()

    wait_for(decided, timeout=timeout, interval=0.3, what="every transaction to be decided")


def _assert_sequential(accepted: list[Accepted], wallet_ids: list[int], per_wallet: int) -> None:
    """Every wallet: seqs 1..n, the stored log is what was accepted, each decision and
    balance_after equals the sequential model, the balance is its final balance."""
    by_wallet = _by_wallet(accepted)
    assert sorted(by_wallet) == sorted(wallet_ids)
    rejected = 0
    for wallet_id in wallet_ids:
        commands = by_wallet[wallet_id]
        assert [seq for seq, _, _ in commands] == list(range(1, per_wallet + 1))
        stored = list(
            WalletTransaction.objects.filter(wallet_id=wallet_id)
            .order_by("seq")
            .values_list("seq", "kind", "amount")
        )
        assert stored == commands, f"wallet {wallet_id}: stored log differs from the 202s"
        balance, expected = sequential_model(commands)
        assert stored_decisions(wallet_id) == expected, f"wallet {wallet_id} differs"
        wallet = Wallet.objects.get(pk=wallet_id)
        assert (wallet.balance, wallet.last_seq, wallet.last_applied_seq) == (
            balance,
            per_wallet,
            per_wallet,
        )
        rejected += sum(1 for row in expected if row[1] == "rejected")
    assert rejected >= len(wallet_ids)  # the HUGE withdrawal of each, at least
    transactions = WalletTransaction.objects.filter(wallet_id__in=wallet_ids)
    assert transactions.count() == len(accepted)  # no Idempotency-Key replay added one
    assert not transactions.filter(balance_after__lt=0).exists()
    assert not transactions.filter(applied_at__isnull=True).exists()
    assert not Wallet.objects.filter(pk__in=wallet_ids, balance__lt=0).exists()
    assert all(check.ok for check in wallet_verify(wallet_ids=wallet_ids))


def _assert_no_failed_apply(workers: list[LiveProcess]) -> None:
    """Neither the appliers (the storm's injected messages) nor the drain (which decides
    what the API accepted) failed, and the drain never fell back to wallet by wallet."""
    for worker in workers:
        log = worker.log_text()
        failures = [
            ln
            for ln in log.splitlines()
            if ((APPLY in ln or DRAIN in ln) and "raised" in ln) or "drain pass failed" in ln
        ]
        assert not failures, f"{worker.name}: {failures[:3]}"


def _storm(
    base_url: str,
    *,
    wallets: int,
    per_wallet: int,
    seed: int,
    during: Callable[[int], None] | None = None,
) -> tuple[list[Accepted], list[int]]:
    rng = random.Random(seed)
    opened = _open_wallets(base_url, users=max(1, wallets // 5), per_user=5)
    wallet_ids = [wallet_id for _, wallet_id in opened]
    plan = _plan(opened, per_wallet=per_wallet, rng=rng)
    done = [0]
    lock = threading.Lock()

    injector = Injector(wallet_ids, rng)

    def on_each() -> None:
        with lock:
            done[0] += 1
            count = done[0]
        injector.maybe_one()
        if during:
            during(count)

    injector.shuffled_round()
    started = time.monotonic()
    accepted = _submit(base_url, plan, on_each=on_each)
    print(f"{len(accepted)} accepted in {time.monotonic() - started:.1f} s")
    injector.shuffled_round()
    print(f"{injector.published} extra apply messages published")
    return accepted, wallet_ids


def test_storm_with_duplicates_and_shuffles_matches_the_sequential_model(
    live_web: LiveProcess,
    worker_pool: Callable[..., list[LiveProcess]],
    private_redis: PrivateRedis,
) -> None:
    workers = worker_pool(3)
    seed = random.randrange(2**32)
    print(f"wallets storm seed={seed}")
    wallets, per_wallet = 50, 40
    accepted, wallet_ids = _storm(
        live_web.url or "", wallets=wallets, per_wallet=per_wallet, seed=seed
    )
    assert len(accepted) == wallets * per_wallet

    started = time.monotonic()
    _wait_decided(wallet_ids, per_wallet)
    print(f"decided {time.monotonic() - started:.1f} s after the last accept")
    # Let the remaining duplicates run too: they must change nothing.
    broker = redis.Redis.from_url(private_redis.url)
    wait_for(lambda: broker.llen("default") == 0, timeout=60, what="the queue to empty")
    _assert_sequential(accepted, wallet_ids, per_wallet)
    _assert_no_failed_apply(workers)
    for worker in workers:
        assert f"Task {APPLY}[" in worker.log_text(), f"{worker.name} applied nothing"


def _storm_struck_at_a_third(
    base_url: str, label: str, strike: Callable[[], None]
) -> tuple[list[Accepted], list[int], int]:
    """A 20-wallet x 40-request storm that runs `strike` once a third of it has been sent;
    returns `_storm`'s accepted requests and wallet ids, and the requests per wallet."""
    seed = random.randrange(2**32)
    print(f"wallets {label} seed={seed}")
    wallets, per_wallet = 20, 40
    struck_at: list[int] = []

    def at_a_third(done: int) -> None:
        if done == wallets * per_wallet // 3:
            strike()
            struck_at.append(done)

    accepted, wallet_ids = _storm(
        base_url, wallets=wallets, per_wallet=per_wallet, seed=seed, during=at_a_third
    )
    assert struck_at, "the strike never happened"
    return accepted, wallet_ids, per_wallet


def test_worker_sigkill_mid_storm_changes_nothing(
    live_web: LiveProcess, worker_pool: Callable[..., list[LiveProcess]]
) -> None:
    victim, *survivors = worker_pool(3)
    # A third of the way in, while the victim is busy applying.
    accepted, wallet_ids, per_wallet = _storm_struck_at_a_third(
        live_web.url or "", "sigkill", victim.kill
    )
    assert not victim.alive()
    assert f"Task {APPLY}[" in victim.log_text(), "the victim was killed before it worked"

    _wait_decided(wallet_ids, per_wallet)
    _assert_sequential(accepted, wallet_ids, per_wallet)
    _assert_no_failed_apply(survivors)


def test_redis_restart_mid_storm_loses_and_repeats_nothing(
    live_web: LiveProcess, worker_pool: Callable[..., list[LiveProcess]], redis_restart
) -> None:
    """Redis loses everything a third of the way in: queued drain wakes and apply messages,
    unacked deliveries, every connection. Accepting needs PostgreSQL only, so every request
    is still a 202; the pending rows are the record of the work, and beat's sweep (sent
    here) wakes a drain for each wallet that still has some."""
    workers = worker_pool(2)
    accepted, wallet_ids, per_wallet = _storm_struck_at_a_third(
        live_web.url or "", "redis restart", redis_restart
    )
    assert len(accepted) == len(wallet_ids) * per_wallet

    _wait_decided(wallet_ids, per_wallet, sweep=True)
    _assert_sequential(accepted, wallet_ids, per_wallet)
    _assert_no_failed_apply(workers)


def test_worker_sigkill_mid_drain_pass_loses_and_repeats_nothing(
    live_web: LiveProcess,
    live_worker: LiveProcess,
    worker_pool: Callable[..., list[LiveProcess]],
    private_redis: PrivateRedis,
) -> None:
    """A worker SIGKILLed inside a `wallets.drain` pass. The backlog (DRAIN_MAX_WALLETS + 10
    wallets) is accepted while no worker runs, so the first pass takes two rounds, each
    its own transaction. Another client holds one transaction row of a second-round
    wallet FOR UPDATE (as any concurrent writer of that row would), so the second round
    stops at its write of the decisions, its wallets locked and the first round
    committed; the kill lands there. The first round must stand untouched, the second
    must vanish with the connection, and the drain message, redelivered to the restarted
    worker, must decide the rest exactly once, as the sequential model says."""
    live_worker.kill()  # the drain message must reach the victim, and no other worker
    broker = redis.Redis.from_url(private_redis.url)
    broker.delete(DRAIN_QUEUE, *WALLETS_DRAIN.redis_keys())  # no stale drain, no stale lease
    seed = random.randrange(2**32)
    print(f"wallets sigkill mid-drain seed={seed}")
    base_url = live_web.url or ""
    wallets, per_wallet = DRAIN_MAX_WALLETS + 10, 5
    opened = _open_wallets(base_url, users=5, per_user=wallets // 5)
    wallet_ids = sorted(wallet_id for _, wallet_id in opened)
    accepted = _submit(base_url, _plan(opened, per_wallet=per_wallet, rng=random.Random(seed)))
    # The accepts woke a drain (one message, or one more per expired lease); none ran.
    assert set(_queued_task_names(broker, DRAIN_QUEUE)) == {DRAIN_TASK}
    # A pass takes the pending wallets by pk, DRAIN_MAX_WALLETS per round.
    first, second = wallet_ids[:DRAIN_MAX_WALLETS], wallet_ids[DRAIN_MAX_WALLETS:]
    held_id = WalletTransaction.objects.get(wallet_id=second[-1], seq=per_wallet).pk
    locked, release = threading.Event(), threading.Event()
    holder_pid: list[int] = []

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_backend_pid() FROM wallets_wallettransaction "
                    "WHERE id = %s FOR UPDATE",
                    [held_id],
                )
                holder_pid.append(cursor.fetchone()[0])
                locked.set()
                assert release.wait(60)
        finally:
            connections.close_all()  # this thread's connection only

    def blocked_by_holder() -> list[tuple[int, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, query FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))",
                [holder_pid[0]],
            )
            return cursor.fetchall()

    def decided_seqs(ids: list[int]) -> set[int]:
        return set(Wallet.objects.filter(pk__in=ids).values_list("last_applied_seq", flat=True))

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold)
        try:
            assert locked.wait(30)
            (victim,) = worker_pool(1)
            ((pass_pid, query),) = wait_for(
                blocked_by_holder, timeout=20, interval=0.05, what="the drain pass to block"
            )
            # Mid-pass, right before the kill: the first round committed, the second has
            # locked its wallets and decided them, and waits to write the decisions.
            assert query.startswith('UPDATE "wallets_wallettransaction"'), query
            assert decided_seqs(first) == {per_wallet}
            assert decided_seqs(second) == {0}
            with transaction.atomic():
                free = Wallet.objects.filter(pk__in=second).select_for_update(skip_locked=True)
                assert not list(free), "the second round's wallets are not locked"
            first_decisions = list(
                WalletTransaction.objects.filter(wallet_id__in=first)
                .order_by("pk")
                .values_list("pk", "status", "balance_after", "applied_at")
            )
            victim.kill()
            killed_log = victim.log_text()
            # The pass's transaction outlives its process until its statement returns.
            assert [pid for pid, _ in blocked_by_holder()] == [pass_pid]
        finally:
            release.set()
        holder.result()
    assert not victim.alive()
    drains = re.findall(rf"Task {DRAIN_TASK}\[([0-9a-f-]+)\] received", killed_log)
    assert len(drains) == 1, killed_log[-3000:]
    killed_id = drains[0]
    assert f"{killed_id}] succeeded" not in killed_log
    assert "Time limit" not in killed_log, "the pass was cut by its time limit, not the kill"

    def pass_gone() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pass_pid])
            return cursor.fetchone() is None

    wait_for(pass_gone, timeout=15, what="the killed pass's connection to end")
    # Its transaction rolled back: the second round is as it was before the pass.
    assert decided_seqs(second) == {0}
    assert not WalletTransaction.objects.filter(wallet_id__in=second).exclude(status="pending")

    victim.start()  # the killed drain's message was never acked: it comes back
    _wait_decided(wallet_ids, per_wallet, timeout=60)
    wait_for(
        lambda: f"Task {DRAIN_TASK}[{killed_id}] succeeded" in victim.log_text(),
        timeout=30,
        what="the killed drain's message to be redelivered and run",
    )
    _assert_sequential(accepted, wallet_ids, per_wallet)
    # What the first round committed before the kill was not decided a second time.
    assert first_decisions == list(
        WalletTransaction.objects.filter(wallet_id__in=first)
        .order_by("pk")
        .values_list("pk", "status", "balance_after", "applied_at")
    )
    # Nor did the drain fail, or fall back to deciding wallet by wallet.
    log = victim.log_text().splitlines()
    failures = [ln for ln in log if (DRAIN_TASK in ln and "raised" in ln) or "pass failed" in ln]
    assert not failures, failures[:3]


def _queued_task_names(broker: redis.Redis, queue_name: str = "default") -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in broker.lrange(queue_name, 0, -1)]
