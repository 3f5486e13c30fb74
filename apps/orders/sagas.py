"""The checkout saga: use_coupon -> reserve_stock -> authorize_payment -> capture_payment
-> confirm, with return_coupon, release_stock and void_authorization as compensations.

Each step runs inside the transaction that records its success (tasks/saga/), so its
database writes happen exactly once. The payment calls leave the database: they carry the
step's idempotency key, so a retried call never charges twice. Payment errors carry the
order's failure reason (`payment_declined`, `capture_failed`, `payment_timeout` once the
retries on timeouts run out); a step may also fail with `out_of_stock` or
`coupon_unavailable`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection
from django.utils import timezone

from apps.coupons import services as coupon_services
from tasks.models import Saga
from tasks.saga import Step, StepContext, StepFailed, define_saga

from . import payments
from .errors import FailureReason
from .models import Order, OrderItem, OrderStatus, Product, order_saga_ref

KIND = "orders.checkout"


def _order(ctx: StepContext, *, lock: bool = True) -> Order:
    orders = Order.objects.select_for_update() if lock else Order.objects
    return orders.get(pk=ctx.context["order_id"])


def _items(ctx: StepContext) -> list[tuple[int, int]]:
    """(product id, quantity) of the order, in product-id order: steps that touch several
    products lock them in that order, so two orders that share products never deadlock.
    From the saga's context (written when the order was placed; items never change), or
    from the database for a saga started before the context carried them."""
    items = ctx.context.get("items")
    if items is None:
        items = OrderItem.objects.filter(order_id=ctx.context["order_id"]).values_list(
            "product_id", "quantity"
        )
    return sorted((int(product_id), int(quantity)) for product_id, quantity in items)


def _coupon_id(ctx: StepContext) -> int | None:
    if "coupon_id" in ctx.context:
        return ctx.context["coupon_id"]
    return _order(ctx, lock=False).coupon_id


# The steps' statements, written by hand: they run for every order, and building them with
# the ORM cost more Python than sending them.
_ORDER_TABLE = f'"{Order._meta.db_table}"'
_PRODUCT_TABLE = f'"{Product._meta.db_table}"'
_RESERVE_SQL = (
    f"UPDATE {_PRODUCT_TABLE} SET stock_reserved = stock_reserved + %s "
    "WHERE id = %s AND stock_on_hand >= stock_reserved + %s"
)
_RELEASE_SQL = f"UPDATE {_PRODUCT_TABLE} SET stock_reserved = stock_reserved - %s WHERE id = %s"
_CONSUME_SQL = (
    f"UPDATE {_PRODUCT_TABLE} SET stock_on_hand = stock_on_hand - %s, "
    "stock_reserved = stock_reserved - %s WHERE id = %s"
)
_ORDER_COLUMNS = frozenset({"status", "stock_held", "authorization_id"})


def _execute(sql: str, params: list[Any]) -> int:
    """Runs one statement; returns how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def _move_order(ctx: StepContext, *, held: bool | None = None, **changes: Any) -> bool:
    """One UPDATE of the order (taking its row lock), when `held` is given only while its
    `stock_held` is that: True if it changed. The guard makes a repeated step a no-op."""
    assert _ORDER_COLUMNS.issuperset(changes), changes
    columns = "".join(f", {name} = %s" for name in changes)
    sql = f"UPDATE {_ORDER_TABLE} SET updated_at = %s{columns} WHERE id = %s"
    params = [timezone.now(), *changes.values(), ctx.context["order_id"]]
    if held is not None:
        sql += " AND stock_held = %s"
        params.append(held)
    return bool(_execute(sql, params))


def use_coupon(ctx: StepContext) -> None:
    if _coupon_id(ctx) is None:
        return
    order = _order(ctx)
    assert order.coupon_id is not None
    if not coupon_services.coupon_use(
        coupon_id=order.coupon_id, user_id=order.user_id, used_by=order.saga_ref
    ):
        raise StepFailed(FailureReason.COUPON_UNAVAILABLE, "the coupon is used or not yours")


def return_coupon(ctx: StepContext) -> None:
    if _coupon_id(ctx) is None:
        return
    order = _order(ctx)
    if order.coupon_id is not None:
        coupon_services.coupon_return(coupon_id=order.coupon_id, used_by=order.saga_ref)


def reserve_stock(ctx: StepContext) -> None:
    """All items or none: each product's availability check and reservation are one
    conditional UPDATE under its row lock, and a short item fails the step, which rolls
    back the items reserved before it."""
    if not _move_order(ctx, held=False, stock_held=True, status=OrderStatus.RESERVED):
        return  # already reserved
    short = []
    for product_id, quantity in _items(ctx):
        if not _execute(_RESERVE_SQL, [quantity, product_id, quantity]):
            short.append(product_id)
    if short:
        raise StepFailed(FailureReason.OUT_OF_STOCK, f"not enough stock of {short}")


def release_stock(ctx: StepContext) -> None:
    if not _move_order(ctx, held=True, stock_held=False):
        return  # nothing held
    for product_id, quantity in _items(ctx):
        _execute(_RELEASE_SQL, [quantity, product_id])


def _charge(ctx: StepContext) -> tuple[Decimal, str]:
    """(total, payment token) of the order: from the saga's context, or from the order row
    (without a row lock: none may be held across an HTTP call) for a saga started before
    the context carried them."""
    if "total" in ctx.context and "payment_token" in ctx.context:
        return Decimal(ctx.context["total"]), ctx.context["payment_token"]
    order = _order(ctx, lock=False)
    return order.total, order.payment_token


def authorize_payment(ctx: StepContext) -> dict[str, Any]:
    total, token = _charge(ctx)
    if total == 0:
        return {"authorization_id": ""}  # a 100% coupon: nothing to charge
    authorization_id = payments.authorize(
        reference=order_saga_ref(ctx.context["order_id"]),
        amount=total,
        token=token,
        idempotency_key=ctx.idempotency_key,
    )
    _move_order(ctx, authorization_id=authorization_id)
    return {"authorization_id": authorization_id}


def void_authorization(ctx: StepContext) -> None:
    authorization_id = ctx.context.get("authorization_id")
    if authorization_id:
        payments.void(authorization_id=authorization_id, idempotency_key=ctx.idempotency_key)


def capture_payment(ctx: StepContext) -> None:
    """The point of no return: once captured, the reserved stock is consumed."""
    if ctx.context.get("authorization_id"):
        total = ctx.context.get("total")
        payments.capture(
            authorization_id=ctx.context["authorization_id"],
            amount=Decimal(total) if total is not None else _order(ctx, lock=False).total,
            idempotency_key=ctx.idempotency_key,
        )
    if _move_order(ctx, held=True, stock_held=False, status=OrderStatus.PAID):
        for product_id, quantity in _items(ctx):
            _execute(_CONSUME_SQL, [quantity, quantity, product_id])
    else:
        _move_order(ctx, status=OrderStatus.PAID)


def confirm(ctx: StepContext) -> None:
    _move_order(ctx, status=OrderStatus.CONFIRMED)
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
            # Most orders name no coupon: their step is `skipped`, not a transaction spent
            # on nothing. (A saga whose context predates coupon_id still runs it and asks.)
            skip_if=lambda context: "coupon_id" in context and context["coupon_id"] is None,
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
