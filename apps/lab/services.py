"""The lab's writes: the naive wallet variant, and what the naive coupon issue needs.

Each is a counter-example to a real service, wrong or slow on purpose; see each docstring
for what it gives up. The real services live in their apps and never call these.
"""

from __future__ import annotations

import secrets
from decimal import Decimal

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from apps.wallets.models import Wallet, WalletTransaction
from apps.wallets.services import amount_problem, transaction_decide
from tasks.context import get_request_id
from tasks.models.ordering import CommandStatus
from tasks.ordering import accept_command
from tasks.outbox import outbox_enqueue

__all__ = [
    "WALLETS_APPLY_NAIVE_TASK",
    "coupon_code_new",
    "transaction_accept_naive",
    "transaction_apply_naive",
]

# The name of the task in tasks.py: the outbox publishes by name.
WALLETS_APPLY_NAIVE_TASK = "lab.wallets_apply_naive"


def coupon_code_new() -> str:
    """A coupon code for the naive issue (the same shape as the real ones)."""
    return secrets.token_hex(6).upper()


def transaction_accept_naive(
    *, wallet_id: int, kind: str, amount: Decimal, owner_id: int | None = None
) -> WalletTransaction:
    """`apps.wallets.services.transaction_accept`, but handing the transaction to one
    plain task of its own (`lab.wallets_apply_naive`) instead of the ordered drain.

    The acceptance itself is the real one (same validation, a gapless seq, the 404 for
    another owner's wallet found under the row lock); only what applies it differs.
    """
    problem = amount_problem(amount)
    if problem or kind not in WalletTransaction.Kind.values:
        fields = {"amount": [problem]} if problem else {"kind": [f'"{kind}" is not valid.']}
        raise SurgeError(ErrorCode.INVALID, "Invalid input.", fields=fields)
    try:
        with transaction.atomic():
            accepted = accept_command(
                command_model=WalletTransaction,
                key_id=wallet_id,
                apply_task=None,
                fields={"kind": kind, "amount": amount, "request_id": get_request_id() or ""},
            )
            wallet_owner_id = (
                Wallet.objects.filter(pk=wallet_id).values_list("owner_id", flat=True).get()
            )
            if owner_id is not None and wallet_owner_id != owner_id:
                raise Wallet.DoesNotExist  # rolls back the seq and the command
            outbox_enqueue(WALLETS_APPLY_NAIVE_TASK, args=[accepted.pk])
    except Wallet.DoesNotExist:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404) from None
    return accepted


def transaction_apply_naive(*, transaction_id: int) -> bool:
    """THE WRONG WAY, on purpose: applies one transaction whenever its task runs, whatever
    its seq, by reading the balance and writing it back without a lock.

    What it gets wrong: deliveries out of order decide withdrawals against the wrong
    balance (a valid one is refused, or an invalid one passes), and two of them for one
    wallet at once lose an update. It keeps only what the database enforces (each
    transaction decided once, no negative balance). Returns False when there was nothing
    to do.
    """
    command = WalletTransaction.objects.filter(
        pk=transaction_id, status=CommandStatus.PENDING
    ).first()
    if command is None:
        return False
    wallet = Wallet.objects.filter(pk=command.wallet_id).first()  # read, no lock
    if wallet is None:
        return False
    outcome = transaction_decide(wallet, command)
    with transaction.atomic():
        decided = WalletTransaction.objects.filter(
            pk=command.pk, status=CommandStatus.PENDING
        ).update(
            status=outcome.status,
            reason=outcome.reason,
            balance_after=command.balance_after,
            applied_at=timezone.now(),
        )
        if not decided:
            return False  # a duplicate delivery decided it meanwhile
        # ... and write back what was read (a lost update when another ran in between).
        # `last_applied_seq` only counts decisions here: it is no position in any order.
        Wallet.objects.filter(pk=wallet.pk).update(
            balance=wallet.balance, last_applied_seq=F("last_applied_seq") + 1
        )
    return True
