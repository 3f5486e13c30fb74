"""Every write of the wallets app: create, accept, apply in order.

The hard part (a gapless per-wallet `seq` at acceptance, strict in-order application under
at-least-once delivery) is `tasks.ordering`; this module only says what a deposit and a
withdrawal do to a balance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.core.errors import ErrorCode, SurgeError
from apps.notifications import kinds
from apps.notifications.services import notify_user
from tasks.base import queue_time_limits
from tasks.context import get_request_id
from tasks.drain import Drain
from tasks.models.ordering import CommandStatus
from tasks.ordering import (
    ApplyOutcome,
    ApplyReport,
    accept_command,
    apply_pending,
    apply_pending_keys,
)
from tasks.outbox import outbox_enqueue

from .errors import RejectionReason
from .models import MONEY_DECIMAL_PLACES, MONEY_MAX_DIGITS, Wallet, WalletTransaction

__all__ = [
    "APPLY_TASK",
    "DRAIN_TASK",
    "DecidedTransaction",
    "amount_problem",
    "max_amount",
    "transaction_accept",
    "transaction_decide",
    "transactions_apply",
    "transactions_drain",
    "wallet_applied_notify",
    "wallet_create",
    "wallets_sweep",
]

logger = logging.getLogger(__name__)

# The names of the tasks in tasks.py: the outbox publishes by name.
APPLY_TASK = "wallets.apply"
# The drain of every wallet's pending transactions (see `transactions_drain`).
DRAIN_TASK = "wallets.drain"
DRAIN_QUEUE = "high"
# Wallets decided per pass transaction, the shortest time between two passes' starts,
# and how long one drain task runs before it hands over to a fresh message.
DRAIN_MAX_WALLETS = 100
DRAIN_PASS_INTERVAL_S = 0.025
DRAIN_BUDGET_S = 5.0


def _drain_budget_s() -> float:
    # Well inside the queue's soft time limit, which a short broker visibility timeout
    # shrinks (tasks/base.py): the drain hands over, it is not cut off.
    return min(DRAIN_BUDGET_S, queue_time_limits(DRAIN_QUEUE)[0] / 2)


# One global key: a pass takes every pending wallet (`apply_pending_keys`), so one chain
# serves them all, looping inside its message between passes.
DRAIN = Drain(
    "wallets",
    task=DRAIN_TASK,
    queue=DRAIN_QUEUE,
    keyed=False,
    lease_ms=10_000,
    pass_interval_s=DRAIN_PASS_INTERVAL_S,
    budget_s=_drain_budget_s,
)
# Commands decided per applier run (one transaction); a full batch re-enqueues the task.
APPLY_BATCH_SIZE = 200

DEFAULT_MAX_AMOUNT = Decimal("1000000.00")
# The largest balance the column holds: a deposit past it is rejected, never a DataError
# (an exception would roll the batch back and hold the wallet's later transactions).
MAX_BALANCE = Decimal(10 ** (MONEY_MAX_DIGITS - MONEY_DECIMAL_PLACES)) - Decimal("0.01")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class DecidedTransaction:
    """One transaction the applier decided, as the owner is told about it."""

    id: int
    seq: int
    status: str
    reason: str
    balance_after: Decimal
    request_id: str


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
    `tasks.ordering.assign_seq`), and the pending row is itself the durable record of the
    work: after the commit `DRAIN.wake` has a drain decide it, and `wallets_sweep` wakes
    one for any pending wallet whose wake went missing, so an accepted transaction is
    always applied eventually. With `owner_id`,
    a wallet of another owner is a 404 found under the wallet's row lock (the transaction
    rolls back, its seq with it), which spares the request a separate ownership query;
    without it, the caller has authorised `wallet_id` (`selectors.wallet_get_for_user`).
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
            # At 500 accepts/s a handful of drain tasks a second, not one per
            # transaction; a lost wake is `wallets_sweep`'s (see `tasks.drain`).
            DRAIN.wake()
    except Wallet.DoesNotExist:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404) from None
    return accepted


def transactions_drain(*, budget_s: float | None = None) -> int:
    """The drain: passes over the wallets with pending transactions until a pass finds
    none and nobody asked for another (`DRAIN.run`, see `tasks.drain`). Returns how
    many transactions it decided.

    Each pass decides up to `DRAIN_MAX_WALLETS` wallets in one transaction
    (`apply_pending_keys`); passes begin at least `DRAIN_PASS_INTERVAL_S` apart, so under
    load a pass takes what a few dozen accepts left (the sleep costs no CPU, and bounds
    what it adds to accept -> applied). After `budget_s` the drain hands over to a fresh
    message (it still holds the flag, so no accept publishes meanwhile). A pass that
    raises is retried wallet by wallet, so one wallet whose transaction cannot be decided
    does not hold back the others: it is left to its own `wallets.apply` task (through
    the outbox, so its retries and dead letter are that task's), and skipped by this drain.
    """
    # Kept across the passes of this message: a wallet left to its own task is not
    # tried again by every later pass.
    failed: set[int] = set()
    return DRAIN.run(work=lambda: _drain_pass(failed), budget_s=budget_s)


def _drain_pass(failed: set[int]) -> int:
    """One pass, as many rounds of `DRAIN_MAX_WALLETS` as there are pending wallets."""
    decided = 0
    while True:
        try:
            reports = apply_pending_keys(
                key_model=Wallet,
                command_model=WalletTransaction,
                apply=_decide_and_notify,
                max_keys=DRAIN_MAX_WALLETS,
                batch_size=APPLY_BATCH_SIZE,
                command_fields=["balance_after"],
                exclude=sorted(failed),
                on_decided=_notify_decided,
            )
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: stop, not "retry wallet by wallet"
        except Exception:
            logger.exception("wallets: drain pass failed; applying wallet by wallet")
            return decided + _drain_one_by_one(failed)
        round_decided = sum(report.decided for report in reports)
        decided += round_decided
        # Another round only after a full one that moved something: a full round that
        # decided nothing (wallets pending but unable to move) would find the same wallets
        # again and spin.
        if len(reports) < DRAIN_MAX_WALLETS or not round_decided:
            return decided


def _drain_one_by_one(failed: set[int]) -> int:
    decided = 0
    pending = (
        Wallet.objects.filter(last_applied_seq__lt=F("last_seq"))
        .exclude(pk__in=failed)
        .values_list("pk", "last_applied_seq")
    )
    for wallet_id, last_applied_seq in list(pending):
        try:
            decided += transactions_apply(wallet_id=wallet_id).decided
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.exception("wallets: wallet %s cannot be applied; left to its task", wallet_id)
            failed.add(wallet_id)
            outbox_enqueue(
                APPLY_TASK,
                args=[wallet_id],
                key=f"{APPLY_TASK}:{wallet_id}:failed-after:{last_applied_seq}",
            )
    return decided


def _notify_decided(wallet: Wallet, commands: list[WalletTransaction]) -> None:
    decided = []
    for command in commands:
        assert command.balance_after is not None
        decided.append(
            DecidedTransaction(
                id=command.pk,
                seq=command.seq,
                status=command.status,
                reason=command.reason,
                balance_after=command.balance_after,
                request_id=command.request_id,
            )
        )
    wallet_applied_notify(wallet_id=wallet.pk, owner_id=wallet.owner_id, decided=decided)


def wallets_sweep() -> bool:
    """Beat: wake a drain when the database shows a wallet with pending transactions.

    The net under `DRAIN.wake`: a wake lost with a crash or a Redis outage, a drain that
    died holding the flag (its lease runs out, then this publishes a fresh one). Cheap
    when nothing is pending: one probe of a partial index. Returns True if it published.
    """
    if not Wallet.objects.filter(last_applied_seq__lt=F("last_seq")).exists():
        return False
    return DRAIN.wake_now()


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


def _decide_and_notify(wallet: Wallet, command: WalletTransaction) -> ApplyOutcome:
    """`transaction_decide`, as the appliers call it inside their transaction: a rejected
    withdrawal also notifies the owner there, so the notice commits with the decision
    (or neither does); "wallet-transaction:<id>:rejected" keeps it to one."""
    outcome = transaction_decide(wallet, command)
    if (
        outcome.status == CommandStatus.REJECTED
        and command.kind == WalletTransaction.Kind.WITHDRAWAL
    ):
        notify_user(
            user_id=wallet.owner_id,
            kind=kinds.WALLET_WITHDRAWAL_REJECTED,
            title="Withdrawal rejected",
            body=f"Your withdrawal of {command.amount} was rejected ({outcome.reason}).",
            url=f"/wallets/?wallet={wallet.pk}",
            source_key=f"wallet-transaction:{command.pk}:rejected",
        )
    return outcome


def transactions_apply(*, wallet_id: int) -> ApplyReport:
    """Decide the wallet's pending transactions strictly in `seq` order (one batch).

    Safe to run any number of times, concurrently, in any order, for a wallet that is gone
    or has nothing pending: each transaction is decided exactly once (see
    `tasks.ordering.apply_pending`). A full batch re-enqueues this work through the outbox.
    """
    decided: list[DecidedTransaction] = []
    owner_ids: list[int] = []

    def decide(wallet: Wallet, command: WalletTransaction) -> ApplyOutcome:
        outcome = _decide_and_notify(wallet, command)
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
