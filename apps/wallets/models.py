"""Wallets and their ordered transaction log.

A wallet is an `OrderedKey`: every transaction gets its `seq` in the transaction that
accepts it, and the applier (`services.transactions_apply`) decides them strictly in that
order. PostgreSQL guards the money: a balance and a `balance_after` are never negative, an
amount is always positive, and a (wallet, seq) names one transaction.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from tasks.models.ordering import (
    OrderedCommand,
    OrderedKey,
    ordered_command_constraints,
    ordered_key_constraints,
)

__all__ = ["MONEY_DECIMAL_PLACES", "MONEY_MAX_DIGITS", "Wallet", "WalletTransaction"]

MONEY_MAX_DIGITS = 14
MONEY_DECIMAL_PLACES = 2


class Wallet(OrderedKey):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="wallets"
    )
    balance = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=Decimal("0.00")
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta(OrderedKey.Meta):
        constraints = [
            *ordered_key_constraints(),
            models.CheckConstraint(condition=Q(balance__gte=0), name="wallets_balance_gte_0"),
        ]
        indexes = [
            # The wallets with pending transactions: what the drain and the sweeper look
            # for (tasks.ordering.apply_pending_keys). Small: only wallets behind.
            models.Index(
                fields=["id"],
                condition=Q(last_applied_seq__lt=F("last_seq")),
                name="wallets_wallet_pending_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"wallet {self.pk}"


class WalletTransaction(OrderedCommand):
    """One accepted deposit or withdrawal, decided in `seq` order.

    `balance_after` is the wallet's balance right after this transaction's turn: changed
    by an applied one, unchanged by a rejected one, null while pending.
    """

    class Kind(models.TextChoices):
        DEPOSIT = "deposit", "Deposit"
        WITHDRAWAL = "withdrawal", "Withdrawal"

    # db_index=False: the unique (wallet, seq) index already starts with the wallet.
    wallet = models.ForeignKey(
        Wallet, on_delete=models.CASCADE, related_name="transactions", db_index=False
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.DecimalField(max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES)
    balance_after = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, null=True, blank=True
    )
    request_id = models.CharField(max_length=128, blank=True)
    # The database's clock, like `applied_at` is the applier's: accept -> applied latency.
    accepted_at = models.DateTimeField(db_default=Now())

    class Meta(OrderedCommand.Meta):
        constraints = [
            *ordered_command_constraints("wallet"),
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="wallets_transaction_amount_gt_0"
            ),
            models.CheckConstraint(
                condition=Q(balance_after__isnull=True) | Q(balance_after__gte=0),
                name="wallets_transaction_balance_after_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["deposit", "withdrawal"]),
                name="wallets_transaction_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} (wallet {self.wallet_id}, seq {self.seq})"
