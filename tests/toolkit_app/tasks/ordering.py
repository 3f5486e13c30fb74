"""The ordering tests' applier task: what an app's `<app>.apply` task looks like."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask
from tasks.ordering import ApplyOutcome, apply_pending

from ..models.ordering import Account, AccountCommand

__all__ = ["APPLY_ACCOUNT", "apply_account", "apply_account_command"]

APPLY_ACCOUNT = "toolkit.apply_account"
# Small, so the live test also exercises the continuation (a full batch re-enqueues).
BATCH_SIZE = 10


def apply_account_command(account: Account, command: AccountCommand) -> ApplyOutcome:
    """Adds or subtracts; a subtraction larger than the balance is rejected."""
    if command.kind == AccountCommand.Kind.SUBTRACT:
        if command.amount > account.balance:
            command.balance_after = account.balance
            return ApplyOutcome.rejected("insufficient_balance")
        account.balance -= command.amount
    else:
        account.balance += command.amount
    command.balance_after = account.balance
    return ApplyOutcome.applied()


@shared_task(name=APPLY_ACCOUNT, base=SurgeTask)
def apply_account(account_id: int) -> None:
    apply_pending(
        key_model=Account,
        command_model=AccountCommand,
        key_id=account_id,
        apply=apply_account_command,
        batch_size=BATCH_SIZE,
        command_fields=["balance_after"],
        continue_task=APPLY_ACCOUNT,
    )
