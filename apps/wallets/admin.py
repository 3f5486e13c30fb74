"""Wallets with their balances and ordered logs, and a check of balance against log.

Everything here is read-only: money moves only through the API and the applier, so an
operator can look and verify, never edit a balance or a decided transaction.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import selectors
from .models import Wallet, WalletTransaction

# The inline shows the newest part of the log; the full log is the transactions list.
INLINE_LOG_LENGTH = 200


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class WalletTransactionInline(_ReadOnly, admin.TabularInline):
    model = WalletTransaction
    ordering = ("seq",)
    fields = (
        "seq",
        "kind",
        "amount",
        "status",
        "reason",
        "balance_after",
        "accepted_at",
        "applied_at",
        "request_id",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"Transactions (ordered by seq; the last {INLINE_LOG_LENGTH})"


@admin.register(Wallet)
class WalletAdmin(_ReadOnly, admin.ModelAdmin):
    list_display = ("id", "owner", "balance", "last_seq", "last_applied_seq", "created_at")
    list_select_related = ("owner",)
    search_fields = ("=id", "owner__username")
    readonly_fields = ("owner", "balance", "last_seq", "last_applied_seq", "created_at")
    inlines = [WalletTransactionInline]
    actions = ["verify"]

    def get_formset_kwargs(
        self, request: HttpRequest, obj: Any, inline: Any, prefix: str
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, WalletTransactionInline) and obj is not None:
            # A busy wallet's log would not fit one page; its tail is what one checks.
            kwargs["queryset"] = kwargs["queryset"].filter(seq__gt=obj.last_seq - INLINE_LOG_LENGTH)
        return kwargs

    @admin.action(description="Verify balance against the transaction log", permissions=["view"])
    def verify(self, request: HttpRequest, queryset: QuerySet[Wallet]) -> None:
        checks = selectors.wallet_verify(wallet_ids=list(queryset.values_list("pk", flat=True)))
        bad = [check for check in checks if not check.ok]
        for check in bad:
            problems = []
            if not check.balance_ok:
                problems.append(
                    f"balance {check.balance} but the log gives {check.expected_balance} "
                    f"(difference {check.balance - check.expected_balance})"
                )
            if not check.log_ok:
                problems.append(
                    f"last_applied_seq {check.last_applied_seq} but "
                    f"{check.decided_count} decided transactions"
                )
            self.message_user(
                request, f"Wallet {check.wallet_id}: {'; '.join(problems)}.", messages.ERROR
            )
        if not bad:
            self.message_user(
                request,
                f"{len(checks)} wallet(s) verified: every balance equals applied deposits "
                "minus applied withdrawals.",
                messages.SUCCESS,
            )


@admin.register(WalletTransaction)
class WalletTransactionAdmin(_ReadOnly, admin.ModelAdmin):
    list_display = (
        "id",
        "wallet",
        "seq",
        "kind",
        "amount",
        "status",
        "reason",
        "balance_after",
        "accepted_at",
        "applied_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("=wallet__id", "=request_id")
    ordering = ("wallet", "seq")
    readonly_fields = [field.name for field in WalletTransaction._meta.fields]
