"""The checkout saga: use_coupon -> reserve_stock -> authorize_payment -> capture_payment
-> confirm, with return_coupon, release_stock and void_authorization as compensations.

Each step runs inside the transaction that records its success (tasks/saga.py), so its
database writes happen exactly once. The payment calls leave the database: they carry the
step's idempotency key, so a retried call never charges twice. Payment errors carry the
order's failure reason (`payment_declined`, `capture_failed`, `payment_timeout` once the
retries on timeouts run out); a step may also fail with `out_of_stock` or
`coupon_unavailable`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import F

from apps.coupons import services as coupon_services
from tasks.models import Saga
from tasks.saga import Step, StepContext, StepFailed, define_saga

from . import payments
from .errors import FailureReason
from .models import Order, OrderStatus, Product

KIND = "orders.checkout"


def _order(ctx: StepContext, *, lock: bool = True) -> Order:
    orders = Order.objects.select_for_update() if lock else Order.objects
    return orders.get(pk=ctx.context["order_id"])


def _locked_products(order: Order) -> tuple[list[Any], dict[int, Product]]:
    """Items and their products, locked in product-id order: two orders that share
    products always lock them in the same order, so they can never deadlock."""
    items = list(order.items.order_by("product_id"))
    products = Product.objects.select_for_update().filter(pk__in=[i.product_id for i in items])
    return items, {p.pk: p for p in products.order_by("pk")}


def use_coupon(ctx: StepContext) -> None:
    order = _order(ctx)
    if order.coupon_id is None:
        return
    if not coupon_services.coupon_use(
        coupon_id=order.coupon_id, user_id=order.user_id, used_by=order.saga_ref
    ):
        raise StepFailed(FailureReason.COUPON_UNAVAILABLE, "the coupon is used or not yours")


def return_coupon(ctx: StepContext) -> None:
    order = _order(ctx)
    if order.coupon_id is not None:
        coupon_services.coupon_return(coupon_id=order.coupon_id, used_by=order.saga_ref)


def reserve_stock(ctx: StepContext) -> None:
    """All items or none: the availability check and the reservation happen under the
    products' row locks."""
    order = _order(ctx)
    if order.stock_held:
        return
    items, products = _locked_products(order)
    short = [i.product_id for i in items if products[i.product_id].stock_available < i.quantity]
    if short:
        raise StepFailed(FailureReason.OUT_OF_STOCK, f"not enough stock of {short}")
    for item in items:
        Product.objects.filter(pk=item.product_id).update(
            stock_reserved=F("stock_reserved") + item.quantity
        )
    order.stock_held = True
    order.status = OrderStatus.RESERVED
    order.save(update_fields=["stock_held", "status", "updated_at"])


def release_stock(ctx: StepContext) -> None:
    order = _order(ctx)
    if not order.stock_held:
        return
    items, _ = _locked_products(order)
    for item in items:
        Product.objects.filter(pk=item.product_id).update(
            stock_reserved=F("stock_reserved") - item.quantity
        )
    order.stock_held = False
    order.save(update_fields=["stock_held", "updated_at"])


def authorize_payment(ctx: StepContext) -> dict[str, Any]:
    order = _order(ctx, lock=False)  # no row lock held across the HTTP call
    if order.total == 0:
        return {"authorization_id": ""}  # a 100% coupon: nothing to charge
    authorization_id = payments.authorize(
        reference=order.saga_ref,
        amount=order.total,
        token=order.payment_token,
        idempotency_key=ctx.idempotency_key,
    )
    Order.objects.filter(pk=order.pk).update(authorization_id=authorization_id)
    return {"authorization_id": authorization_id}


def void_authorization(ctx: StepContext) -> None:
    authorization_id = ctx.context.get("authorization_id")
    if authorization_id:
        payments.void(authorization_id=authorization_id, idempotency_key=ctx.idempotency_key)


def capture_payment(ctx: StepContext) -> None:
    """The point of no return: once captured, the reserved stock is consumed."""
    order = _order(ctx, lock=False)
    if ctx.context.get("authorization_id"):
        payments.capture(
            authorization_id=ctx.context["authorization_id"],
            amount=order.total,
            idempotency_key=ctx.idempotency_key,
        )
    order = _order(ctx)
    if order.stock_held:
        items, _ = _locked_products(order)
        for item in items:
            Product.objects.filter(pk=item.product_id).update(
                stock_on_hand=F("stock_on_hand") - item.quantity,
                stock_reserved=F("stock_reserved") - item.quantity,
            )
        order.stock_held = False
    order.status = OrderStatus.PAID
    order.save(update_fields=["stock_held", "status", "updated_at"])


def confirm(ctx: StepContext) -> None:
    order = _order(ctx)
    order.status = OrderStatus.CONFIRMED
    order.save(update_fields=["status", "updated_at"])
    # The confirmation email goes through the emails app's service once that app exists.


_TERMINAL = {
    "failed": OrderStatus.FAILED,
    "cancelled": OrderStatus.CANCELLED,
    "compensation_failed": OrderStatus.COMPENSATION_FAILED,
}


def _follow_saga(saga: Saga, status: str) -> None:
    """Keeps the order's status in step with its saga's end, in the same transaction."""
    if status in _TERMINAL:
        reason = saga.failure_reason or ("cancelled" if status == "cancelled" else "")
        Order.objects.filter(pk=saga.context["order_id"]).update(
            status=_TERMINAL[status], failure_reason=reason[:64]
        )


define_saga(
    KIND,
    steps=[
        Step(
            "use_coupon",
            forward=use_coupon,
            compensate=return_coupon,
            compensate_name="return_coupon",
        ),
        Step(
            "reserve_stock",
            forward=reserve_stock,
            compensate=release_stock,
            compensate_name="release_stock",
        ),
        Step(
            "authorize_payment",
            forward=authorize_payment,
            compensate=void_authorization,
            compensate_name="void_authorization",
            max_attempts=4,
        ),
        Step("capture_payment", forward=capture_payment, max_attempts=4, point_of_no_return=True),
        Step("confirm", forward=confirm),
    ],
    on_status=_follow_saga,
)
