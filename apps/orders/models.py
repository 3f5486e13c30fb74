"""Products with stock, and orders whose flow is a saga (tasks/saga/).

Stock is guarded by the database: on hand and reserved are never negative and reserved
never exceeds on hand, whatever the code does.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from tasks.statemachine import StateMachine


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    stock_on_hand = models.PositiveIntegerField(default=0)
    stock_reserved = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative"),
            models.CheckConstraint(
                condition=Q(stock_reserved__lte=F("stock_on_hand")),
                name="product_reserved_within_on_hand",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def stock_available(self) -> int:
        return self.stock_on_hand - self.stock_reserved


class OrderStatus(models.TextChoices):
    PENDING = "pending"
    RESERVED = "reserved"
    PAID = "paid"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATION_FAILED = "compensation_failed"


# Every status an order takes, and from where (apps/orders/services.py `order_transition`
# is the one writer). The order follows its checkout saga: reserve_stock, capture_payment
# and confirm move it forward; the saga's end moves it to failed, cancelled or
# compensation_failed (a cancel is refused once the capture started, so never from paid),
# and an operator's resumed compensation moves it on from compensation_failed.
_S = OrderStatus
ORDER_MACHINE = StateMachine(
    "order",
    {
        _S.PENDING: {_S.RESERVED, _S.FAILED, _S.CANCELLED, _S.COMPENSATION_FAILED},
        _S.RESERVED: {_S.PAID, _S.FAILED, _S.CANCELLED, _S.COMPENSATION_FAILED},
        _S.PAID: {_S.CONFIRMED, _S.FAILED, _S.COMPENSATION_FAILED},
        _S.COMPENSATION_FAILED: {_S.FAILED, _S.CANCELLED},
    },
)

# The saga kind of an order's checkout (apps/orders/sagas.py defines it).
CHECKOUT_SAGA_KIND = "orders.checkout"


def order_saga_ref(order_id: int) -> str:
    """The `ref` of an order's saga (and the reference its payments carry)."""
    return f"order:{order_id}"


class Order(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    status = models.CharField(
        max_length=24, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    subtotal = models.DecimalField(max_digits=14, decimal_places=2)
    discount_percent = models.PositiveSmallIntegerField(default=0)
    total = models.DecimalField(max_digits=14, decimal_places=2)
    coupon_id = models.BigIntegerField(null=True, blank=True)
    payment_token = models.CharField(max_length=40, default="tok_ok")
    authorization_id = models.CharField(max_length=128, blank=True)
    failure_reason = models.CharField(max_length=64, blank=True)
    # Set by reserve_stock and cleared by release_stock in the same transaction as the stock
    # change, so a repeated step or compensation can tell whether it already happened.
    stock_held = models.BooleanField(default=False)
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-id"], name="order_user_recent")]
        constraints = [
            models.CheckConstraint(condition=Q(total__gte=0), name="order_total_not_negative")
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"

    @property
    def saga_ref(self) -> str:
        return order_saga_ref(self.pk)


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)  # captured at order time

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="order_item_product_once"),
            models.CheckConstraint(
                condition=Q(quantity__gte=1), name="order_item_quantity_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"
