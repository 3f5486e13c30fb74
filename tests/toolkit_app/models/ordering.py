"""Concrete models for the ordering tests: a balance whose commands add or subtract."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from tasks.models.ordering import (
    OrderedCommand,
    OrderedKey,
    ordered_command_constraints,
    ordered_key_constraints,
)

__all__ = ["Account", "AccountCommand"]


class Account(OrderedKey):
    balance = models.BigIntegerField(default=0)

    class Meta(OrderedKey.Meta):
        constraints = [
            *ordered_key_constraints(),
            models.CheckConstraint(
                condition=Q(balance__gte=0), name="toolkit_app_account_balance_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"account {self.pk}"


class AccountCommand(OrderedCommand):
    class Kind(models.TextChoices):
        ADD = "add", "Add"
        SUBTRACT = "subtract", "Subtract"

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="commands", db_index=False
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    amount = models.BigIntegerField()
    # The balance right after this command was decided (unchanged when rejected).
    balance_after = models.BigIntegerField(null=True, blank=True)

    class Meta(OrderedCommand.Meta):
        constraints = [
            *ordered_command_constraints("account"),
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="toolkit_app_accountcommand_amount_gt_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} (seq {self.seq})"
