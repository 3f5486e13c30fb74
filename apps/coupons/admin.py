from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Campaign, Coupon, CouponRequest


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "progress", "discount_percent", "starts_at", "ends_at")
    readonly_fields = ("issued_count", "gate_epoch", "created_at")
    actions = ["rebuild_gate"]

    @admin.display(description="issued / total")
    def progress(self, obj: Campaign) -> str:
        pct = 100 * obj.issued_count / obj.total_quantity if obj.total_quantity else 0
        return f"{obj.issued_count} / {obj.total_quantity} ({pct:.0f}%)"

    def save_model(self, request: HttpRequest, obj: Campaign, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        services.gate_rebuild(campaign_id=obj.pk)

    @admin.action(description="Rebuild the Redis gate from PostgreSQL")
    def rebuild_gate(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            accepted = services.gate_rebuild(campaign_id=campaign.pk)
            self.message_user(
                request, f"{campaign}: gate rebuilt, {accepted} accepted.", messages.SUCCESS
            )


@admin.register(CouponRequest)
class CouponRequestAdmin(admin.ModelAdmin):
    list_display = ("id", "campaign", "user", "status", "accepted_at", "issued_at", "request_id")
    list_filter = ("status", "campaign")
    search_fields = ("request_id",)
    raw_id_fields = ("user",)


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    list_display = (
        "code",
        "campaign",
        "user",
        "discount_percent",
        "issued_at",
        "used_at",
        "used_by",
    )
    list_filter = ("campaign",)
    search_fields = ("code", "used_by")
    raw_id_fields = ("user",)
