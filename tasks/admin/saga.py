"""Sagas in the admin: what is stuck or parked, each saga's step timeline, and the two
operator actions (retry a failed compensation, run a saga now)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from ..errors import IllegalTransition
from ..models.saga import Saga, SagaStatus, SagaStep
from ..saga import saga_resume_compensation, saga_run_now

__all__ = ["SagaAdmin"]


class SagaStepInline(admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    ordering = ("id",)
    fields = readonly_fields = (
        "index",
        "direction",
        "name",
        "status",
        "attempts",
        "error",
        "started_at",
        "finished_at",
        "at",
    )

    def has_add_permission(self, request: HttpRequest, obj: Saga | None = None) -> bool:
        return False


@admin.register(Saga)
class SagaAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "ref",
        "status",
        "attention",
        "current_step",
        "failure_reason",
        "created_at",
        "updated_at",
        "finished_at",
    )
    list_filter = ("status", "needs_attention", "kind")
    search_fields = ("=id", "ref", "request_id")
    ordering = ("-needs_attention", "-id")
    inlines = (SagaStepInline,)
    actions = ("retry_compensation", "run_now")
    readonly_fields = tuple(f.name for f in Saga._meta.fields)

    @admin.display(description="attention", ordering="needs_attention")
    def attention(self, saga: Saga) -> str:
        if not saga.needs_attention:
            return ""
        return format_html(
            '<strong style="color:#fff;background:#ba2121;padding:2px 6px">{}</strong>',
            "needs attention",
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Saga | None = None) -> bool:
        return False

    # Operators who may change sagas, not everyone who may look at them.
    @admin.action(
        description="Retry compensation of the selected parked sagas",
        permissions=["change"],
    )
    def retry_compensation(self, request: HttpRequest, queryset: QuerySet[Saga]) -> None:
        resumed, refused = 0, []
        for saga_id in queryset.values_list("pk", flat=True):
            try:
                saga_resume_compensation(saga_id=saga_id)
                resumed += 1
            except IllegalTransition:
                refused.append(saga_id)
        if resumed:
            self.message_user(request, f"Compensation resumed for {resumed} saga(s).")
        if refused:
            self.message_user(
                request,
                f"Not in {SagaStatus.COMPENSATION_FAILED}, left alone: {refused}",
                messages.WARNING,
            )

    @admin.action(description="Run the selected sagas now", permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Saga]) -> None:
        woken = sum(saga_run_now(saga_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Enqueued {woken} saga(s); finished ones were left alone.")
