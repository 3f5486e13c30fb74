"""Abstract tables for per-key ordering (see `tasks.ordering` for how they are used).

An app makes two concrete models:

    class Account(OrderedKey):                  # the thing commands are ordered for
        balance = models.BigIntegerField(default=0)

        class Meta(OrderedKey.Meta):
            constraints = [
                *ordered_key_constraints(),     # keep these when adding your own
                models.CheckConstraint(condition=Q(balance__gte=0), name="balance_gte_0"),
            ]

    class AccountCommand(OrderedCommand):       # one accepted command, in `seq` order
        # db_index=False: the unique (key, seq) index below already starts with the key.
        account = models.ForeignKey(Account, on_delete=models.CASCADE, db_index=False)
        amount = models.BigIntegerField()

        class Meta(OrderedCommand.Meta):
            constraints = ordered_command_constraints("account")

A command model must have exactly one ForeignKey to its key model (the ordering code finds it
by type). A subclass that declares no `Meta` inherits the key constraints as they are; one
that declares `Meta` must rebuild the list from the helpers, or it silently loses them.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

__all__ = [
    "CommandStatus",
    "OrderedCommand",
    "OrderedKey",
    "ordered_command_constraints",
    "ordered_key_constraints",
]


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"


def ordered_key_constraints() -> list[models.BaseConstraint]:
    """The key's invariants: nothing is applied that was not accepted first."""
    return [
        models.CheckConstraint(
            condition=Q(last_applied_seq__lte=F("last_seq")),
            name="%(app_label)s_%(class)s_applied_lte_seq",
        ),
        models.CheckConstraint(
            condition=Q(last_applied_seq__gte=0), name="%(app_label)s_%(class)s_applied_gte_0"
        ),
    ]


def ordered_command_constraints(key_field: str) -> list[models.BaseConstraint]:
    """Every constraint a command model needs, given the name of its ForeignKey to the key.

    The unique (key, seq) index is what makes a seq mean one command, and it is also the
    index the applier's `WHERE key = … AND seq > … ORDER BY seq` walks.
    """
    return [
        models.UniqueConstraint(
            fields=[key_field, "seq"], name="%(app_label)s_%(class)s_key_seq_uniq"
        ),
        *_command_base_constraints(),
    ]


def _command_base_constraints() -> list[models.BaseConstraint]:
    return [
        models.CheckConstraint(condition=Q(seq__gte=1), name="%(app_label)s_%(class)s_seq_gte_1"),
        # A decided command carries the time it was decided, a pending one does not.
        models.CheckConstraint(
            condition=(
                Q(status=CommandStatus.PENDING, applied_at__isnull=True)
                | Q(
                    status__in=[CommandStatus.APPLIED, CommandStatus.REJECTED],
                    applied_at__isnull=False,
                )
            ),
            name="%(app_label)s_%(class)s_decided_has_time",
        ),
    ]


class OrderedKey(models.Model):
    """A row that commands are ordered for (an account, a room).

    `last_seq` is the last seq handed out by `assign_seq`; `last_applied_seq` the last one
    the applier decided (applied or rejected). Commands `last_applied_seq + 1 … last_seq`
    are pending.
    """

    last_seq = models.BigIntegerField(default=0)
    last_applied_seq = models.BigIntegerField(default=0)

    class Meta:
        abstract = True
        constraints = ordered_key_constraints()


class OrderedCommand(models.Model):
    """One accepted command with its per-key `seq`. Subclasses add the ForeignKey to their
    key model and `ordered_command_constraints(<fk name>)` (see the module docstring).

    `applied_at` is when the applier decided the command, whether it applied or rejected
    it; `reason` says why it was rejected.
    """

    seq = models.BigIntegerField()
    status = models.CharField(
        max_length=8, choices=CommandStatus.choices, default=CommandStatus.PENDING
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        abstract = True
        constraints = _command_base_constraints()
