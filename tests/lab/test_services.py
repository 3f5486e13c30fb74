"""The lab's services: the naive wallet variant, called directly (no setting switches it:
the lab's code is the variant)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from apps.core.errors import SurgeError
from apps.lab import services as lab
from apps.wallets import services as wallets
from apps.wallets.models import Wallet, WalletTransaction
from tasks.models import OutboxMessage

from ..wallets.model import DEPOSIT, WITHDRAWAL, sequential_model, stored_decisions

pytestmark = pytest.mark.django_db


@pytest.fixture
def wallet(django_user_model: Any) -> Wallet:
    return wallets.wallet_create(owner_id=django_user_model.objects.create_user("ann").pk)


def _accept(wallet: Wallet, kind: str, amount: str) -> tuple[int, str, Decimal]:
    accepted = lab.transaction_accept_naive(wallet_id=wallet.pk, kind=kind, amount=Decimal(amount))
    return accepted.seq, kind, Decimal(amount)


def test_naive_accept_hands_each_transaction_to_its_own_task(
    wallet: Wallet, django_user_model: Any
) -> None:
    outbox_before = OutboxMessage.objects.count()
    first, second = _accept(wallet, DEPOSIT, "3.00"), _accept(wallet, WITHDRAWAL, "1.00")
    assert (first[0], second[0]) == (1, 2)  # the real acceptance: gapless seqs
    ids = list(WalletTransaction.objects.filter(wallet=wallet).order_by("seq").values("pk"))
    queued = OutboxMessage.objects.order_by("pk")[outbox_before:]
    assert [(m.task_name, m.args) for m in queued] == [
        (lab.WALLETS_APPLY_NAIVE_TASK, [row["pk"]]) for row in ids
    ]

    # Another owner's wallet is the real endpoint's 404, and leaves no trace either.
    bob = django_user_model.objects.create_user("bob")
    with pytest.raises(SurgeError) as refused:
        lab.transaction_accept_naive(
            wallet_id=wallet.pk, owner_id=bob.pk, kind=DEPOSIT, amount=Decimal(1)
        )
    assert (refused.value.code, refused.value.status) == ("not_found", 404)
    assert Wallet.objects.get(pk=wallet.pk).last_seq == 2
    assert OutboxMessage.objects.count() == outbox_before + 2
    with pytest.raises(SurgeError) as invalid:
        lab.transaction_accept_naive(wallet_id=wallet.pk, kind=DEPOSIT, amount=Decimal(0))
    assert invalid.value.code == "invalid"


def test_naive_apply_decides_in_delivery_order_and_gets_it_wrong(wallet: Wallet) -> None:
    accepted = [_accept(wallet, DEPOSIT, "10.00"), _accept(wallet, WITHDRAWAL, "10.00")]
    ids = dict(WalletTransaction.objects.values_list("seq", "pk"))
    # Delivered the other way round, as a broker may: the withdrawal meets an empty wallet.
    assert lab.transaction_apply_naive(transaction_id=ids[2]) is True
    assert lab.transaction_apply_naive(transaction_id=ids[1]) is True
    assert lab.transaction_apply_naive(transaction_id=ids[2]) is False  # once each

    _, expected = sequential_model(accepted)
    assert expected == [(1, "applied", "", Decimal("10.00")), (2, "applied", "", Decimal("0.00"))]
    assert stored_decisions(wallet.pk) == [
        (1, "applied", "", Decimal("10.00")),
        (2, "rejected", "insufficient_funds", Decimal("0.00")),
    ]
    assert Wallet.objects.get(pk=wallet.pk).balance == Decimal("10.00")  # the model says 0
