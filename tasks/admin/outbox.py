"""The outbox in the admin: read-only, to see what is pending, in flight or done."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..models.outbox import OutboxMessage

__all__ = ["OutboxMessageAdmin"]


class OutboxStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("pending", "pending (not published)"),
            ("sent", "sent (not done)"),
            ("done", "done"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        value = self.value()
        if value == "pending":
            return queryset.filter(sent_at__isnull=True, done_at__isnull=True)
        if value == "sent":
            return queryset.filter(sent_at__isnull=False, done_at__isnull=True)
        if value == "done":
            return queryset.filter(done_at__isnull=False)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "task_name",
        "status",
        "queue",
        "key",
        "publish_count",
        "created_at",
        "sent_at",
        "done_at",
        "request_id",
    )
    list_filter = (OutboxStatusFilter, "task_name", "queue", "created_at")
    search_fields = ("=id", "task_name", "=key", "=request_id", "=message_id")
    ordering = ("-id",)
    readonly_fields = tuple(f.name for f in OutboxMessage._meta.fields)
    # The default count(*) on a big outbox would make every page slow.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OutboxMessage | None = None) -> bool:
        return False
