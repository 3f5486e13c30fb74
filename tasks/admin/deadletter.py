"""Dead letters in the admin: list with filters, a read-only detail with the traceback, and
the two operator actions, which call the services (replay is idempotent)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..deadletters import deadletter_discard, deadletter_replay
from ..models.deadletter import DeadLetter

__all__ = ["DeadLetterAdmin"]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "task_name",
        "status",
        "reason",
        "exception_class",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "request_id",
    )
    list_filter = ("status", "reason", "task_name", "last_failed_at")
    search_fields = ("=id", "task_name", "=task_id", "=request_id", "exception_message")
    date_hierarchy = "last_failed_at"
    ordering = ("-last_failed_at",)
    actions = ("replay", "discard")
    fields = (
        "task_name",
        "status",
        "reason",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "exception_class",
        "exception_message",
        "traceback_text",
        "args",
        "kwargs",
        "queue",
        "task_id",
        "message_id",
        "request_id",
        "replayed_at",
        "replay_key",
        "replay_outbox_id",
        "discarded_at",
    )
    readonly_fields = fields

    @admin.display(description="traceback")
    def traceback_text(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", obj.traceback or "-")

    # Read-only: rows are written by the worker and changed only by the actions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tasks.change_deadletter")

    @admin.action(description="Replay selected dead letters (once each)", permissions=["operate"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        replayed = [pk for pk in ids if deadletter_replay(dead_letter_id=pk)]
        self.message_user(request, f"Replayed {len(replayed)} of {len(ids)}.", messages.SUCCESS)
        skipped = len(ids) - len(replayed)
        if skipped:
            self.message_user(
                request,
                f"{skipped} not replayed: not open any more, or their task no longer exists.",
                messages.WARNING,
            )

    @admin.action(description="Discard selected dead letters", permissions=["operate"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        discarded = sum(1 for pk in ids if deadletter_discard(dead_letter_id=pk))
        self.message_user(request, f"Discarded {discarded} of {len(ids)}.", messages.SUCCESS)
