"""Order writes: products, placing an order (order + items + saga in one transaction),
cancelling, and the operator's retry of a failed compensation."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from apps.core.errors import ErrorCode, SurgeError
from apps.coupons import selectors as coupon_selectors
from tasks.context import get_request_id
from tasks.saga import (
    NotCancellable,
    saga_cancel,
    saga_get_by_ref,
    saga_resume_compensation,
    saga_start,
)

from .errors import OrderError
from .models import Order, OrderItem, Product
from .sagas import KIND

CENTS = Decimal("0.01")


def product_create(*, name: str, price: Decimal, stock: int) -> Product:
    return Product.objects.create(name=name, price=price, stock_on_hand=stock)


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int


def _invalid(field: str, message: str) -> SurgeError:
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def order_place(
    *, user_id: int, lines: list[Line], coupon_id: int | None, payment_token: str
) -> Order:
    """Stores the order `pending` with its items (prices as of now) and starts its saga, in
    one transaction: either all of it exists and will be processed, or none of it."""
    products = Product.objects.in_bulk([line.product_id for line in lines])
    unknown = [line.product_id for line in lines if line.product_id not in products]
    if unknown:
        raise _invalid("items", f"Unknown products: {unknown}.")
    discount = 0
    if coupon_id is not None:
        coupon = coupon_selectors.coupon_get_for_user(coupon_id=coupon_id, user_id=user_id)
        if coupon is None or coupon.used_at is not None:
            raise _invalid("coupon_id", "Not one of your unused coupons.")
        discount = coupon.discount_percent
    subtotal = sum(
        (products[line.product_id].price * line.quantity for line in lines), Decimal("0")
    )
    total = (subtotal * (100 - discount) / 100).quantize(CENTS, rounding=ROUND_HALF_UP)
    with transaction.atomic():
        order = Order.objects.create(
            user_id=user_id,
            subtotal=subtotal,
            discount_percent=discount,
            total=total,
            coupon_id=coupon_id,
            payment_token=payment_token,
            request_id=get_request_id() or "",
        )
        OrderItem.objects.bulk_create(
            OrderItem(
                order=order,
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price=products[line.product_id].price,
            )
            for line in lines
        )
        # What the steps need and never changes, so they need not read it again.
        context = {
            "order_id": order.pk,
            "coupon_id": coupon_id,
            "total": str(total),
            "items": sorted([line.product_id, line.quantity] for line in lines),
        }
        saga_start(kind=KIND, ref=order.saga_ref, context=context)
    return order


def order_cancel(*, order: Order) -> Order:
    """Compensates and ends `cancelled` while the payment is not captured; else 409."""
    saga = saga_get_by_ref(kind=KIND, ref=order.saga_ref)
    if saga is None:
        raise SurgeError(OrderError.NOT_CANCELLABLE, "This order cannot be cancelled.", status=409)
    try:
        saga_cancel(saga_id=saga.pk, reason="cancelled")
    except NotCancellable:
        raise SurgeError(
            OrderError.NOT_CANCELLABLE,
            "The payment was captured or the order is finished: it cannot be cancelled.",
            status=409,
        ) from None
    order.refresh_from_db()
    return order


def order_retry_compensation(*, order_id: int) -> None:
    """The operator's "retry compensation" for an order parked in compensation_failed."""
    saga = saga_get_by_ref(kind=KIND, ref=f"order:{order_id}")
    if saga is not None:
        saga_resume_compensation(saga_id=saga.pk)
