"""Inbox rows, topics, preferences, Web Push subscriptions and broadcasts (with their live
progress, and an action that starts one from the admin)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from . import services
from .models import (
    Broadcast,
    Notification,
    NotificationPreference,
    Topic,
    TopicSubscription,
    WebPushDelivery,
    WebPushSubscription,
)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "kind", "title", "read_at", "created_at", "source_key")
    list_select_related = ("user",)
    list_filter = ("kind",)
    search_fields = ("=id", "user__username", "=source_key", "=request_id")
    raw_id_fields = ("user", "broadcast")
    ordering = ("-id",)
    # The list never counts a big table: the paginator's COUNT(*) would scan it.
    show_full_result_count = False


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "subscribers", "created_at")
    search_fields = ("slug", "name")
    actions = ["broadcast_test"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(subscriber_count=Count("subscriptions"))

    @admin.display(ordering="subscriber_count")
    def subscribers(self, topic: Any) -> int:
        return int(topic.subscriber_count)

    @admin.action(description="Broadcast a test notification to the subscribers")
    def broadcast_test(self, request: HttpRequest, queryset: QuerySet[Topic]) -> None:
        for topic in queryset:
            broadcast = services.broadcast_create(
                topic_slug=topic.slug,
                title=f"Test broadcast to {topic.slug}",
                body="Sent from the admin.",
                created_by_id=request.user.pk,
            )
            self.message_user(
                request, f"Broadcast {broadcast.pk} queued for {topic.slug}.", messages.SUCCESS
            )


@admin.register(TopicSubscription)
class TopicSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("id", "topic", "user", "created_at")
    list_select_related = ("topic", "user")
    search_fields = ("topic__slug", "user__username")
    raw_id_fields = ("user", "topic")


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "kind", "in_app", "web_push", "email")
    list_select_related = ("user",)
    list_filter = ("kind",)
    search_fields = ("user__username",)
    raw_id_fields = ("user",)


@admin.register(WebPushSubscription)
class WebPushSubscriptionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "endpoint_host",
        "failure_count",
        "last_success_at",
        "last_failure_at",
        "created_at",
    )
    list_select_related = ("user",)
    search_fields = ("user__username", "endpoint")
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "last_success_at", "last_failure_at", "failure_count")

    @admin.display(description="push service")
    def endpoint_host(self, subscription: WebPushSubscription) -> str:
        return subscription.endpoint.split("/")[2] if "//" in subscription.endpoint else ""


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "topic",
        "title",
        "status",
        "recipients",
        "deliveries",
        "delivered",
        "failed",
        "gone",
        "created_by",
        "created_at",
        "finished_at",
    )
    list_select_related = ("topic", "created_by")
    list_filter = ("status",)
    # Progress is written by the fan-out and the Web Push delivery only; a broadcast starts
    # from the API or the topics' admin action (which enqueue its first batch).
    readonly_fields = [field.name for field in Broadcast._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebPushDelivery)
class WebPushDeliveryAdmin(admin.ModelAdmin):
    """Read-only: a delivery's state is the drain's (claim, send, record)."""

    list_display = (
        "id",
        "notification",
        "subscription",
        "broadcast",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "finished_at",
    )
    list_filter = ("status",)
    list_select_related = ("notification", "subscription")
    search_fields = ("=notification__id", "=broadcast__id", "=subscription__id")
    raw_id_fields = ("notification", "subscription", "broadcast")
    readonly_fields = [field.name for field in WebPushDelivery._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
