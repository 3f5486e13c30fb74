"""The lab on the real stack: its naive wallet variant, fed the kind of input the ordered
applier gets right (tests/wallets/test_live.py), gets it wrong.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis

from apps.wallets.models import Wallet, WalletTransaction
from apps.wallets.selectors import wallet_verify
from config.celery import app
from config.devservices import PrivateRedis

from ..harness import LiveProcess, wait_for
from ..wallets.model import DEPOSIT, WITHDRAWAL, sequential_model, stored_decisions
from ..wallets.test_live import (
    Request,
    _by_wallet,
    _open_wallets,
    _plan,
    _queued_task_names,
    _submit,
)
from .conftest import LAB

pytestmark = pytest.mark.live

APPLY_NAIVE = "lab.wallets_apply_naive"
# The real POST /api/wallets/{id}/transactions/, taken by the naive variant.
NAIVE = "/api/bench/wallets/{wallet_id}/naive-transactions/"


def test_naive_mode_gets_the_same_kind_of_input_wrong(
    live_worker: LiveProcess,
    lab_web: LiveProcess,
    worker_pool: Callable[..., list[LiveProcess]],
    private_redis: PrivateRedis,
) -> None:
    """The naive variant (the lab's naive-transactions endpoint): one plain task per
    transaction, applied in whatever order it is delivered. Deliveries are reordered on
    purpose (as a broker may after a redelivery) so the failure is certain, not a lucky
    race: for half of the wallets the naive tasks arrive in reverse seq order, for the
    other half in order."""
    live_worker.kill()  # nothing may consume until the deliveries are reordered
    broker = redis.Redis.from_url(private_redis.url)
    broker.delete("default")
    seed = random.randrange(2**32)
    print(f"wallets naive seed={seed}")
    rng = random.Random(seed)
    base_url = lab_web.url or ""
    wallets, per_wallet = 20, 20

    opened = _open_wallets(base_url, users=4, per_user=5)
    wallet_ids = [wallet_id for _, wallet_id in opened]
    accepted = _submit(base_url, _plan(opened, per_wallet=per_wallet - 2, rng=rng), path=NAIVE)
    # Each wallet ends with a deposit of 5.00 and then a withdrawal of 1.00: in seq order
    # the withdrawal is always covered; delivered first, it meets an empty wallet.
    for tail in ((DEPOSIT, "5.00"), (WITHDRAWAL, "1.00")):
        accepted += _submit(base_url, [Request(t, w, *tail) for t, w in opened], path=NAIVE)
    by_wallet = _by_wallet(accepted)
    assert all(rows[-2:] == [(per_wallet - 1, DEPOSIT, Decimal("5.00")),
                             (per_wallet, WITHDRAWAL, Decimal("1.00"))]
               for rows in by_wallet.values())  # fmt: skip

    # The variant was chosen at acceptance: one naive task per transaction, no ordered applier.
    queued = _queued_task_names(broker)
    assert queued == [APPLY_NAIVE] * len(accepted) == [APPLY_NAIVE] * wallets * per_wallet
    broker.delete("default")
    ids = {(item.wallet_id, item.seq): item.id for item in accepted}
    reversed_wallets = set(rng.sample(wallet_ids, wallets // 2))
    with app.producer_or_acquire() as producer:
        for wallet_id in rng.sample(wallet_ids, wallets):
            seqs = range(1, per_wallet + 1)
            for seq in reversed(seqs) if wallet_id in reversed_wallets else seqs:
                app.send_task(APPLY_NAIVE, args=[ids[wallet_id, seq]], producer=producer)
    # One process, one at a time: the deliveries are applied exactly in that order.
    (naive_worker,) = worker_pool(1, concurrency=1, env=LAB)

    def decided() -> bool:
        pending = WalletTransaction.objects.filter(wallet_id__in=wallet_ids, status="pending")
        return not pending.exists()

    wait_for(decided, timeout=90, interval=0.3, what="every naive task to run")
    assert f"Task {APPLY_NAIVE}[" in naive_worker.log_text()

    wrong = []
    for wallet_id in wallet_ids:
        balance, expected = sequential_model(by_wallet[wallet_id])
        stored = stored_decisions(wallet_id)
        assert [row[0] for row in stored] == list(range(1, per_wallet + 1))
        if wallet_id in reversed_wallets:
            # The covered withdrawal was refused: the seed's warning, demonstrated.
            assert expected[-1] == (per_wallet, "applied", "", balance)
            assert stored[-1] == (per_wallet, "rejected", "insufficient_funds", Decimal("0.00"))
            wrong.append(wallet_id)
        else:
            # In order, naive is right: only the order made the difference.
            assert stored == expected
            assert Wallet.objects.get(pk=wallet_id).balance == balance
    assert len(wrong) == wallets // 2
    # The database still kept what it enforces: nothing negative, each decided once.
    assert not WalletTransaction.objects.filter(balance_after__lt=0).exists()
    assert not Wallet.objects.filter(balance__lt=0).exists()
    assert WalletTransaction.objects.filter(wallet_id__in=wallet_ids).count() == len(accepted)
    # And the verify action sees nothing wrong with the arithmetic, only with the order:
    # every balance still equals its applied deposits minus its applied withdrawals.
    assert all(check.balance_ok for check in wallet_verify(wallet_ids=wallet_ids))
