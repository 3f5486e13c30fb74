"""Every write of the wallets app: create, accept, apply (ordered, and the naive lab variant).

The hard part (a gapless per-wallet `seq` at acceptance, strict in-order application under
at-least-once delivery) is `tasks.ordering`; this module only says what a deposit and a
withdrawal do to a balance.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from tasks.context import get_request_id
from tasks.models.ordering import CommandStatus
from tasks.ordering import ApplyOutcome, ApplyReport, accept_command, apply_pending
from tasks.outbox import outbox_enqueue

from .errors import RejectionReason
from .models import MONEY_DECIMAL_PLACES, MONEY_MAX_DIGITS, Wallet, WalletTransaction

__all__ = [
    "APPLY_NAIVE_TASK",
    "APPLY_TASK",
    "ApplyMode",
    "DecidedTransaction",
    "amount_problem",
    "apply_mode",
    "max_amount",
    "transaction_accept",
    "transaction_apply_naive",
    "transaction_decide",
    "transactions_apply",
    "wallet_applied_notify",
    "wallet_create",
]

logger = logging.getLogger(__name__)

# The names of the tasks in tasks.py: the outbox publishes by name.
APPLY_TASK = "wallets.apply"
APPLY_NAIVE_TASK = "wallets.apply_naive"
# Accepts of one wallet share one pending applier message within this many seconds. Short:
# a shared message lost with its worker is redelivered only after the visibility timeout,
# and the accepts of the next window publish a fresh one in the meantime.
APPLY_COALESCE_WINDOW_S = 2
# Commands decided per applier run (one transaction); a full batch re-enqueues the task.
APPLY_BATCH_SIZE = 200

DEFAULT_MAX_AMOUNT = Decimal("1000000.00")
# The largest balance the column holds: a deposit past it is rejected, never a DataError
# (an exception would roll the batch back and hold the wallet's later transactions).
MAX_BALANCE = Decimal(10 ** (MONEY_MAX_DIGITS - MONEY_DECIMAL_PLACES)) - Decimal("0.01")
CENT = Decimal("0.01")


class ApplyMode(StrEnum):
    ORDERED = "ordered"
    # The seed lab's counter-example: one plain task per transaction, no ordering, a
    # read-modify-write of the balance. Wrong by design; never the default.
    NAIVE = "naive"


@dataclass(frozen=True, slots=True)
class DecidedTransaction:
    """One transaction the applier decided, as the owner is told about it."""

    id: int
    seq: int
    status: str
    reason: str
    balance_after: Decimal
    request_id: str


def apply_mode() -> ApplyMode:
    """`WALLETS_APPLY_MODE` ("ordered" unless set); anything else is a configuration bug."""
    value = getattr(settings, "WALLETS_APPLY_MODE", ApplyMode.ORDERED.value)
    try:
        return ApplyMode(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"WALLETS_APPLY_MODE must be 'ordered' or 'naive', not {value!r}"
        ) from None


def max_amount() -> Decimal:
    """The largest amount one transaction may move (`WALLET_MAX_AMOUNT`)."""
    return Decimal(str(getattr(settings, "WALLET_MAX_AMOUNT", DEFAULT_MAX_AMOUNT)))


def amount_problem(amount: Decimal) -> str | None:
    """Why `amount` cannot be a transaction's amount, or None when it can."""
    try:
        if not amount.is_finite():
            return "A valid number is required."
        if amount <= 0:
            return "Must be greater than 0."
        if amount != amount.quantize(CENT):
            return f"Ensure that there are no more than {MONEY_DECIMAL_PLACES} decimal places."
    except InvalidOperation:  # quantize of a value too large for the context
        return f"Ensure this value is less than or equal to {max_amount()}."
    limit = max_amount()
    if amount > limit:
        return f"Ensure this value is less than or equal to {limit}."
    return None


def wallet_create(*, owner_id: int) -> Wallet:
    """A new, empty wallet of `owner_id` (balance 0, no transactions)."""
    return Wallet.objects.create(owner_id=owner_id)


def transaction_accept(
    *, wallet_id: int, kind: str, amount: Decimal, owner_id: int | None = None
) -> WalletTransaction:
    """Accept one deposit or withdrawal: durable, with the wallet's next `seq`, pending.

    Invariants: the seq is assigned in this transaction (gapless, in acceptance order, see
    `tasks.ordering.assign_seq`), and the row commits together with the outbox entry of
    its applier, so an accepted transaction is always applied eventually. With `owner_id`,
    a wallet of another owner is a 404 found under the wallet's row lock (the transaction
    rolls back, its seq with it), which spares the request a separate ownership query;
    without it, the caller has authorised `wallet_id` (`selectors.wallet_get_for_user`).
    """
    problem = amount_problem(amount)
    if problem or kind not in WalletTransaction.Kind.values:
        fields = {"amount": [problem]} if problem else {"kind": [f'"{kind}" is not valid.']}
        raise SurgeError(ErrorCode.INVALID, "Invalid input.", fields=fields)
    mode = apply_mode()
    try:
        with transaction.atomic():
            accepted = accept_command(
                command_model=WalletTransaction,
                key_id=wallet_id,
                apply_task=None,
                fields={"kind": kind, "amount": amount, "request_id": get_request_id() or ""},
            )
            # Read under the row lock `assign_seq` took: see `_applier_enqueue`.
            wallet_owner_id, last_applied_seq = (
                Wallet.objects.filter(pk=wallet_id)
                .values_list("owner_id", "last_applied_seq")
                .get()
            )
            if owner_id is not None and wallet_owner_id != owner_id:
                raise Wallet.DoesNotExist  # rolls back the seq and the command
            if mode == ApplyMode.ORDERED:
                _applier_enqueue(wallet_id=wallet_id, last_applied_seq=last_applied_seq)
            else:
                outbox_enqueue(APPLY_NAIVE_TASK, args=[accepted.pk])
    except Wallet.DoesNotExist:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404) from None
    return accepted


def _applier_enqueue(*, wallet_id: int, last_applied_seq: int) -> None:
    """Have an applier run for `wallet_id` after this transaction commits, unless one that
    will see this transaction's command is on its way already.

    Runs in the accepting transaction, after `assign_seq` (which holds the wallet's row
    lock until commit), with the wallet's `last_applied_seq` N as read under that lock.
    The outbox key names the wallet and N. If an accept that committed earlier enqueued
    the same key, no applier has decided anything since: any run after that commit finds
    that command's seq and every one before it committed, so it decides at least one and
    moves N. That applier has yet to take the lock, then: it runs after this commit and
    sees this command too. Under load, accepts that arrive while the wallet's applier is
    behind share one message instead of one each; when the applier keeps up, N moves
    between accepts and each gets its own.

    The key also names a short time window, so a shared message that went wrong (its worker
    died and the broker holds it until the visibility timeout, or it ended as a dead letter
    after an outage and N stays put) holds back only the accepts of its own window: the
    next window's accepts enqueue afresh.
    """
    window = int(time.time() // APPLY_COALESCE_WINDOW_S)
    outbox_enqueue(
        APPLY_TASK,
        args=[wallet_id],
        key=f"{APPLY_TASK}:{wallet_id}:after:{last_applied_seq}:{window}",
    )


def transaction_decide(wallet: Wallet, command: WalletTransaction) -> ApplyOutcome:
    """What `command` does to `wallet` at its turn (the ordering library's callback).

    A withdrawal larger than the balance is rejected with `insufficient_funds` and leaves
    the wallet untouched; so does a deposit that would pass the largest storable balance.
    `balance_after` is the balance once the command is decided, in both cases.
    """
    if command.kind == WalletTransaction.Kind.WITHDRAWAL:
        if command.amount > wallet.balance:
            command.balance_after = wallet.balance
            return ApplyOutcome.rejected(RejectionReason.INSUFFICIENT_FUNDS)
        wallet.balance -= command.amount
    else:
        if wallet.balance + command.amount > MAX_BALANCE:
            command.balance_after = wallet.balance
            return ApplyOutcome.rejected(RejectionReason.BALANCE_LIMIT)
        wallet.balance += command.amount
    command.balance_after = wallet.balance
    return ApplyOutcome.applied()


def transactions_apply(*, wallet_id: int) -> ApplyReport:
    """Decide the wallet's pending transactions strictly in `seq` order (one batch).

    Safe to run any number of times, concurrently, in any order, for a wallet that is gone
    or has nothing pending: each transaction is decided exactly once (see
    `tasks.ordering.apply_pending`). A full batch re-enqueues this work through the outbox.
    """
    decided: list[DecidedTransaction] = []
    owner_ids: list[int] = []

    def decide(wallet: Wallet, command: WalletTransaction) -> ApplyOutcome:
        outcome = transaction_decide(wallet, command)
        if not owner_ids:
            owner_ids.append(wallet.owner_id)
        assert command.balance_after is not None
        decided.append(
            DecidedTransaction(
                id=command.pk,
                seq=command.seq,
                status=outcome.status,
                reason=outcome.reason,
                balance_after=command.balance_after,
                request_id=command.request_id,
            )
        )
        return outcome

    report = apply_pending(
        key_model=Wallet,
        command_model=WalletTransaction,
        key_id=wallet_id,
        apply=decide,
        batch_size=APPLY_BATCH_SIZE,
        command_fields=["balance_after"],
        continue_task=APPLY_TASK,
    )
    # Only now: `apply_pending` has committed, so what we announce is what is stored.
    if decided:
        wallet_applied_notify(wallet_id=wallet_id, owner_id=owner_ids[0], decided=decided)
    return report


def wallet_applied_notify(
    *, wallet_id: int, owner_id: int, decided: list[DecidedTransaction]
) -> None:
    """Tell the owner what was decided: `wallet.applied` events over the notifications
    WebSocket, each with its seq and balance.

    HOOK: the notifications app does not exist yet, so this only logs. When it lands, send
    one `wallet.applied` event per decided transaction (or one per batch) to the owner's
    per-user group, carrying `wallet`, `seq`, `status`, `reason`, `balance_after` and
    `request_id`. A lost event costs the client a `GET .../transactions/` from its last
    seq, never data (the channel layer is a hint, PostgreSQL the truth).
    """
    logger.debug(
        "wallet.applied wallet=%s owner=%s seqs=%s..%s balance=%s",
        wallet_id,
        owner_id,
        decided[0].seq,
        decided[-1].seq,
        decided[-1].balance_after,
    )


def transaction_apply_naive(*, transaction_id: int) -> bool:
    """THE WRONG WAY, kept for the seed lab (`WALLETS_APPLY_MODE=naive`): applies one
    transaction whenever its task runs, whatever its seq, by reading the balance and
    writing it back without a lock.

    What it gets wrong, on purpose: deliveries out of order decide withdrawals against the
    wrong balance (a valid one is refused, or an invalid one passes), and two of them for
    one wallet at once lose an update. It keeps only what the database enforces (each
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
