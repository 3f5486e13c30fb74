"""The sequential truth the wallets tests compare the stored log with."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from apps.wallets.models import WalletTransaction

DEPOSIT = WalletTransaction.Kind.DEPOSIT.value
WITHDRAWAL = WalletTransaction.Kind.WITHDRAWAL.value

Decision = tuple[int, str, str, Decimal]


def sequential_model(
    accepted: Iterable[tuple[int, str, Decimal]],
) -> tuple[Decimal, list[Decision]]:
    """(final balance, [(seq, status, reason, balance_after)]) applying in seq order from 0."""
    balance = Decimal("0.00")
    decided: list[Decision] = []
    for seq, kind, amount in sorted(accepted):
        if kind == WITHDRAWAL and amount > balance:
            decided.append((seq, "rejected", "insufficient_funds", balance))
            continue
        balance += amount if kind == DEPOSIT else -amount
        decided.append((seq, "applied", "", balance))
    return balance, decided


def stored_decisions(wallet_id: int) -> list[tuple]:
    return list(
        WalletTransaction.objects.filter(wallet_id=wallet_id)
        .order_by("seq")
        .values_list("seq", "status", "reason", "balance_after")
    )
