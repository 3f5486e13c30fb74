"""Every read of the wallets app."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, DecimalField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.http import Http404

from tasks.models.ordering import CommandStatus

from .models import Wallet, WalletTransaction

__all__ = [
    "WalletCheck",
    "transaction_list",
    "wallet_get_for_user",
    "wallet_list_for_user",
    "wallet_verify",
]


def wallet_list_for_user(*, user_id: int) -> QuerySet[Wallet]:
    return Wallet.objects.filter(owner_id=user_id)


def wallet_get_for_user(*, wallet_id: int, user_id: int) -> Wallet:
    """Another user's wallet is a 404, never a 403 that leaks its existence."""
    wallet = Wallet.objects.filter(pk=wallet_id, owner_id=user_id).first()
    if wallet is None:
        raise Http404
    return wallet


def transaction_list(*, wallet_id: int) -> QuerySet[WalletTransaction]:
    """The wallet's log; callers order it by `seq` (the unique (wallet, seq) index)."""
    return WalletTransaction.objects.filter(wallet_id=wallet_id)


@dataclass(frozen=True, slots=True)
class WalletCheck:
    """A wallet's stored state against what its transaction log says it must be."""

    wallet_id: int
    balance: Decimal
    expected_balance: Decimal
    last_applied_seq: int
    decided_count: int

    @property
    def balance_ok(self) -> bool:
        return self.balance == self.expected_balance

    @property
    def log_ok(self) -> bool:
        # Ordered application decides 1..last_applied_seq, each once, and nothing after.
        return self.decided_count == self.last_applied_seq

    @property
    def ok(self) -> bool:
        return self.balance_ok and self.log_ok


def wallet_verify(*, wallet_ids: list[int]) -> list[WalletCheck]:
    """Recompute each wallet's balance from its log: applied deposits - applied withdrawals.

    One statement, so the balance and the sums come from one snapshot even while an
    applier commits (two queries could straddle a batch and report a false difference).
    """
    money = DecimalField(max_digits=20, decimal_places=2)
    zero = Value(Decimal("0.00"), output_field=money)
    applied = Q(transactions__status=CommandStatus.APPLIED)

    def applied_sum(kind: str) -> Coalesce:
        return Coalesce(
            Sum(
                "transactions__amount",
                filter=applied & Q(transactions__kind=kind),
                output_field=money,
            ),
            zero,
            output_field=money,
        )

    rows = (
        Wallet.objects.filter(pk__in=wallet_ids)
        .annotate(
            deposits=applied_sum(WalletTransaction.Kind.DEPOSIT),
            withdrawals=applied_sum(WalletTransaction.Kind.WITHDRAWAL),
            decided=Count(
                "transactions",
                filter=Q(transactions__status__in=[CommandStatus.APPLIED, CommandStatus.REJECTED]),
            ),
        )
        .order_by("pk")
        .values_list("pk", "balance", "deposits", "withdrawals", "last_applied_seq", "decided")
    )
    return [
        WalletCheck(
            wallet_id=pk,
            balance=balance,
            expected_balance=deposits - withdrawals,
            last_applied_seq=last_applied_seq,
            decided_count=decided,
        )
        for pk, balance, deposits, withdrawals, last_applied_seq, decided in rows
    ]
