"""Order writes: products, placing an order (order + items + saga in one transaction),
cancelling, and the operator's retry of a failed compensation."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction
from django.utils import timezone

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
from .models import Order, OrderItem, OrderStatus, Product, order_saga_ref
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


# The accepting transaction's statements, written by hand: every order runs them inside the
# request, and building them with the ORM cost more of the web process's CPU than sending them.
_PRICES_SQL = f'SELECT id, price FROM "{Product._meta.db_table}" WHERE id = ANY(%s)'
_ORDER_SQL = (
    f'INSERT INTO "{Order._meta.db_table}" (user_id, status, subtotal, discount_percent, '
    "total, coupon_id, payment_token, authorization_id, failure_reason, stock_held, "
    "request_id, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, '', '', false, %s, %s, %s) RETURNING id"
)
_ITEMS_SQL = (
    f'INSERT INTO "{OrderItem._meta.db_table}" (order_id, product_id, quantity, unit_price) VALUES '
)


def order_place(
    *, user_id: int, lines: list[Line], coupon_id: int | None, payment_token: str
) -> Order:
    """Stores the order `pending` with its items (prices as of now) and starts its saga, in
    one transaction: either all of it exists and will be processed, or none of it."""
    with connection.cursor() as cursor:
        cursor.execute(_PRICES_SQL, [[line.product_id for line in lines]])
        prices: dict[int, Decimal] = dict(cursor.fetchall())
    unknown = [line.product_id for line in lines if line.product_id not in prices]
    if unknown:
        raise _invalid("items", f"Unknown products: {unknown}.")
    discount = 0
    if coupon_id is not None:
        coupon = coupon_selectors.coupon_get_for_user(coupon_id=coupon_id, user_id=user_id)
        if coupon is None or coupon.used_at is not None:
            raise _invalid("coupon_id", "Not one of your unused coupons.")
        discount = coupon.discount_percent
    subtotal = sum((prices[line.product_id] * line.quantity for line in lines), Decimal("0"))
    total = (subtotal * (100 - discount) / 100).quantize(CENTS, rounding=ROUND_HALF_UP)
    now = timezone.now()
    order = Order(
        user_id=user_id,
        status=OrderStatus.PENDING,
        subtotal=subtotal,
        discount_percent=discount,
        total=total,
        coupon_id=coupon_id,
        payment_token=payment_token,
        request_id=get_request_id() or "",
        created_at=now,
        updated_at=now,
    )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                _ORDER_SQL,
                [
                    user_id, str(order.status), subtotal, discount, total, coupon_id,
                    payment_token, order.request_id, now, now,
                ],
            )  # fmt: skip
            order.pk = cursor.fetchone()[0]
            cursor.execute(
                _ITEMS_SQL + ", ".join(["(%s, %s, %s, %s)"] * len(lines)),
                [
                    value
                    for line in lines
                    for value in (order.pk, line.product_id, line.quantity, prices[line.product_id])
                ],
            )
        order._state.adding, order._state.db = False, connection.alias
        # What the steps need and never changes, so they need not read it again.
        context = {
            "order_id": order.pk,
            "coupon_id": coupon_id,
            "total": str(total),
            "payment_token": payment_token,
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
    saga = saga_get_by_ref(kind=KIND, ref=order_saga_ref(order_id))
    if saga is not None:
        saga_resume_compensation(saga_id=saga.pk)
