"""Mail rows (filter by status and priority, resend), the suppression list, campaigns."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Campaign, Email, Suppression


@admin.register(Email)
class EmailAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "to",
        "subject",
        "priority",
        "status",
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "priority")
    search_fields = ("=id", "to", "=message_id", "=request_id")
    raw_id_fields = ("campaign",)
    ordering = ("-id",)
    # Rows are written by the pipeline only: an edit here would race a worker's claim.
    readonly_fields = [f.name for f in Email._meta.fields]
    actions = ["resend"]
    # The list never counts a big table: the paginator's COUNT(*) would scan it.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Resend (a new mail with the same content)")
    def resend(self, request: HttpRequest, queryset: QuerySet[Email]) -> None:
        resent = [
            services.email_resend(email_id=pk) for pk in queryset.values_list("pk", flat=True)
        ]
        done = [e for e in resent if e is not None]
        self.message_user(request, f"{len(done)} mail(s) queued again.", messages.SUCCESS)


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("address", "reason", "at")
    list_filter = ("reason",)
    search_fields = ("address",)
    ordering = ("-at",)

    def save_model(
        self, request: HttpRequest, obj: Suppression, form: object, change: bool
    ) -> None:
        # One spelling per mailbox, as the pipeline looks it up.
        obj.address = obj.address.strip().lower()
        super().save_model(request, obj, form, change)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "template", "status", "total", "skipped", "created_at")
    list_filter = ("status",)
    search_fields = ("name",)
