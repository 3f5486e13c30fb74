from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from . import selectors, services
from .models import Order, OrderItem, OrderStatus, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "price", "stock_on_hand", "stock_reserved", "available")
    search_fields = ("name",)

    @admin.display(description="available")
    def available(self, obj: Product) -> int:
        return obj.stock_available


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    can_delete = False
    readonly_fields = ("product", "quantity", "unit_price")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "status_badge",
        "total",
        "failure_reason",
        "payment_token",
        "created_at",
    )
    list_filter = ("status", "failure_reason", "payment_token")
    search_fields = ("=id", "request_id", "user__username")
    readonly_fields = (
        "user",
        "status",
        "subtotal",
        "discount_percent",
        "total",
        "coupon_id",
        "payment_token",
        "authorization_id",
        "failure_reason",
        "stock_held",
        "request_id",
        "created_at",
        "timeline",
    )
    inlines = [OrderItemInline]
    actions = ["retry_compensation"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Order) -> str:
        if obj.status == OrderStatus.COMPENSATION_FAILED:
            return format_html('<strong style="color:#ba2121">{}</strong>', obj.status)
        return obj.status

    @admin.display(description="saga steps")
    def timeline(self, obj: Order) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    s["at"].strftime("%H:%M:%S.%f")[:-3],
                    s["name"],
                    s["status"],
                    s["attempts"],
                    s["error"][:200],
                )
                for s in selectors.order_steps(order=obj)
            ),
        )
        return format_html(
            "<table><tr><th>at</th><th>step</th><th>status</th><th>attempts</th><th>error</th></tr>{}</table>",
            rows,
        )

    @admin.action(description="Retry compensation (orders in compensation_failed)")
    def retry_compensation(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        parked = queryset.filter(status=OrderStatus.COMPENSATION_FAILED)
        for order in parked:
            services.order_retry_compensation(order_id=order.pk)
        self.message_user(
            request, f"Retrying compensation of {parked.count()} order(s).", messages.SUCCESS
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
