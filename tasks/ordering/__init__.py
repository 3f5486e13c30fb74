"""Per-key ordering: commands get a gapless `seq` when accepted and are applied strictly in it.

Why: with at-least-once delivery and many workers, two commands for one key (a credit and a
debit) can run in either order, twice, or at the same time. Here the order is fixed when a
command is accepted (its `seq`, assigned in the accepting transaction) and enforced when it
is applied (the applier locks the key and takes `last_applied_seq + 1, + 2, …` only). Any
worker may run the applier, any number of times, in any order: the result is the same.
Unrelated keys never wait for each other: the only lock is the key's own row.

Models: a key model subclasses `OrderedKey`, a command model subclasses `OrderedCommand`
(see `tasks.models.ordering` for the exact recipe).

Accept (a service, in one transaction)::

    with transaction.atomic():
        # ... validate, authorise ...
        command = accept_command(
            command_model=AccountCommand,
            key_id=account_id,
            apply_task="<app>.apply",
            fields={"kind": kind, "amount": amount},
        )

`accept_command` is `assign_seq` + an insert + `outbox_enqueue("<app>.apply", args=[key_id])`;
an app needing more control calls the three itself, in one transaction. The key row stays
locked until that transaction ends, so accepts for one key queue up behind each other (and
behind a running applier) while other keys proceed.

Apply (a thin task)::

    @shared_task(name="<app>.apply", base=SurgeTask)
    def apply(key_id: int) -> None:
        apply_pending(
            key_model=Account,
            command_model=AccountCommand,
            key_id=key_id,
            apply=services.account_command_apply,   # (key, command) -> ApplyOutcome
            command_fields=["balance_after"],       # command fields the callback sets
            continue_task="<app>.apply",            # re-enqueued when a batch was full
        )

The callback mutates the key object (a balance) and the command object (only the fields
named in `command_fields`), and returns `ApplyOutcome.applied()` or
`ApplyOutcome.rejected(reason)`; a rejecting callback must leave the key untouched. The
library saves both. Business refusals are rejections, never exceptions: an exception rolls
the whole batch back and the key waits until a retry succeeds (strict order means a
command cannot be skipped).

Requires READ COMMITTED (Django's default on PostgreSQL): the applier's command query must
see what committed while it waited for the key lock.

The package: `outcome` (what a callback decides and what a run reports), `accept` (the seq
and the accepted command), `apply` (the appliers, one key or many), `store` (model
introspection and the hand-written UPDATEs). An app that decides many keys' pending
commands in one task (`apply_pending_keys`) wakes that task with `tasks.drain.Drain`.
"""

from __future__ import annotations

from .accept import accept_command, assign_seq
from .apply import apply_pending, apply_pending_keys
from .outcome import ApplyOutcome, ApplyReport, OrderingError

__all__ = [
    "ApplyOutcome",
    "ApplyReport",
    "OrderingError",
    "accept_command",
    "apply_pending",
    "apply_pending_keys",
    "assign_seq",
]
