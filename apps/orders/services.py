"""Order writes: products, placing an order (order + items + saga in one transaction),
cancelling, the operator's retry of a failed compensation, and what each step of the
checkout saga does (apps/orders/sagas.py wires them to the steps).

Every status write goes through `order_transition` and the one table, ORDER_MACHINE. The
steps' services are safe to repeat (a saga step may run again): a guard on the order's row
makes a repeat a no-op. The payment calls (`order_payment_*`) leave the database and must
run outside any transaction (the saga's remote steps); what they change in the database is
recorded by the local services that follow them (`order_authorization_record`,
`order_paid_record`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from apps.coupons import selectors as coupon_selectors
from apps.coupons import services as coupon_services
from apps.emails.services import email_order_confirmation
from apps.notifications import kinds
from apps.notifications.services import notify_user
from tasks.context import get_request_id
from tasks.errors import IllegalTransition
from tasks.saga import (
    NotCancellable,
    StepFailed,
    saga_cancel,
    saga_get_by_ref,
    saga_resume_compensation,
    saga_start,
)

from . import payments
from .errors import FailureReason, OrderError
from .models import (
    CHECKOUT_SAGA_KIND,
    ORDER_MACHINE,
    Order,
    OrderItem,
    OrderStatus,
    Product,
    order_saga_ref,
)

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
        saga_start(kind=CHECKOUT_SAGA_KIND, ref=order.saga_ref, context=context)
    return order


def order_cancel(*, order: Order) -> Order:
    """Compensates and ends `cancelled` while the payment is not captured; else 409."""
    saga = saga_get_by_ref(kind=CHECKOUT_SAGA_KIND, ref=order.saga_ref)
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
    saga = saga_get_by_ref(kind=CHECKOUT_SAGA_KIND, ref=order_saga_ref(order_id))
    if saga is not None:
        saga_resume_compensation(saga_id=saga.pk)


# --- Status ------------------------------------------------------------------------------
# The order's statements, written by hand: the steps run them for every order, and building
# them with the ORM cost more Python than sending them.
_ORDER_TABLE = f'"{Order._meta.db_table}"'
_PRODUCT_TABLE = f'"{Product._meta.db_table}"'
_ORDER_COLUMNS = frozenset({"stock_held", "authorization_id", "failure_reason"})
_STATUS_SQL = f"SELECT status FROM {_ORDER_TABLE} WHERE id = %s"


def _execute(sql: str, params: list[Any]) -> int:
    """Runs one statement; returns how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def _order_update(
    order_id: int, *, where: str = "", where_params: Sequence[Any] = (), **changes: Any
) -> int:
    """One UPDATE of the order (taking its row lock) with `changes` and `updated_at`, only
    if the extra `where` condition holds; returns how many rows changed (0 or 1)."""
    assert _ORDER_COLUMNS.union({"status"}).issuperset(changes), changes
    columns = "".join(f", {name} = %s" for name in changes)
    sql = f"UPDATE {_ORDER_TABLE} SET updated_at = %s{columns} WHERE id = %s{where}"
    return _execute(sql, [timezone.now(), *changes.values(), order_id, *where_params])


def order_transition(
    *,
    order_id: int,
    current: Iterable[str],
    target: str,
    held: bool | None = None,
    **changes: Any,
) -> bool:
    """Moves the order to `target` from one of the `current` states, each checked against
    ORDER_MACHINE before any SQL (an illegal move raises IllegalTransition), in one
    conditional UPDATE with `changes`; with `held`, only while its `stock_held` is that.

    True if it moved. An order already at `target` is a repeat of the move: False, nothing
    changes. An order found in a state the move does not start from raises
    IllegalTransition naming that state (a concurrent writer, or a bug)."""
    expected = [str(state) for state in current]
    for state in expected:
        ORDER_MACHINE.check(state, target)
    where = " AND status = ANY(%s)"
    params: list[Any] = [expected]
    if held is not None:
        where += " AND stock_held = %s"
        params.append(held)
    if _order_update(order_id, where=where, where_params=params, status=str(target), **changes):
        return True
    with connection.cursor() as cursor:
        cursor.execute(_STATUS_SQL, [order_id])
        row = cursor.fetchone()
    if row is None:
        raise Order.DoesNotExist(f"order {order_id}")
    if row[0] == target or row[0] in expected:  # done already (or its stock guard held)
        return False
    raise IllegalTransition(ORDER_MACHINE.name, row[0], str(target))


# --- The checkout saga's steps -------------------------------------------------------------
# Each is one step's (or compensation's) body: the saga calls it with what its context holds.

_RESERVE_SQL = (
    f"UPDATE {_PRODUCT_TABLE} SET stock_reserved = stock_reserved + %s "
    "WHERE id = %s AND stock_on_hand >= stock_reserved + %s"
)
_RELEASE_SQL = f"UPDATE {_PRODUCT_TABLE} SET stock_reserved = stock_reserved - %s WHERE id = %s"
_CONSUME_SQL = (
    f"UPDATE {_PRODUCT_TABLE} SET stock_on_hand = stock_on_hand - %s, "
    "stock_reserved = stock_reserved - %s WHERE id = %s"
)
# Where the saga's end leaves the order.
_SAGA_END = {
    "failed": OrderStatus.FAILED,
    "cancelled": OrderStatus.CANCELLED,
    "compensation_failed": OrderStatus.COMPENSATION_FAILED,
}


def _in_lock_order(items: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """(product id, quantity) in product-id order: statements that touch several products
    lock them in that order, so two orders that share products never deadlock."""
    return sorted((int(product_id), int(quantity)) for product_id, quantity in items)


def order_coupon_use(*, order_id: int, coupon_id: int | None) -> None:
    """Takes the order's coupon for it (none named: nothing to do); StepFailed
    `coupon_unavailable` when it is used by another order or not the buyer's."""
    if coupon_id is None:
        return
    order = Order.objects.select_for_update().get(pk=order_id)
    if not coupon_services.coupon_use(
        coupon_id=coupon_id, user_id=order.user_id, used_by=order.saga_ref
    ):
        raise StepFailed(FailureReason.COUPON_UNAVAILABLE, "the coupon is used or not yours")


def order_coupon_return(*, order_id: int, coupon_id: int | None) -> None:
    """Gives the order's coupon back, if the order holds it."""
    if coupon_id is not None:
        coupon_services.coupon_return(coupon_id=coupon_id, used_by=order_saga_ref(order_id))


def order_stock_reserve(*, order_id: int, items: Iterable[Sequence[int]]) -> None:
    """pending -> reserved, with every item's stock reserved, or StepFailed `out_of_stock`
    (the caller's transaction rolls back the items reserved before the short one). Each
    product's availability check and reservation are one conditional UPDATE under its row
    lock; `stock_held` makes a repeat a no-op."""
    if not order_transition(
        order_id=order_id,
        current=[OrderStatus.PENDING],
        target=OrderStatus.RESERVED,
        held=False,
        stock_held=True,
    ):
        return  # already reserved
    short = []
    for product_id, quantity in _in_lock_order(items):
        if not _execute(_RESERVE_SQL, [quantity, product_id, quantity]):
            short.append(product_id)
    if short:
        raise StepFailed(FailureReason.OUT_OF_STOCK, f"not enough stock of {short}")


def order_stock_release(*, order_id: int, items: Iterable[Sequence[int]]) -> None:
    """Gives the reserved stock back, if the order holds it (its status stays: the saga's
    end moves it)."""
    if not _order_update(
        order_id, where=" AND stock_held = %s", where_params=[True], stock_held=False
    ):
        return  # nothing held
    for product_id, quantity in _in_lock_order(items):
        _execute(_RELEASE_SQL, [quantity, product_id])


def order_payment_authorize(
    *, order_id: int, total: Decimal, payment_token: str, idempotency_key: str
) -> str:
    """Authorizes the order's total at the gateway (outside any transaction); returns the
    authorization id, "" for a total of 0 (a 100% coupon: nothing to charge)."""
    if total == 0:
        return ""
    return payments.authorize(
        reference=order_saga_ref(order_id),
        amount=total,
        token=payment_token,
        idempotency_key=idempotency_key,
    )


def order_authorization_record(*, order_id: int, authorization_id: str) -> None:
    if authorization_id:
        _order_update(order_id, authorization_id=authorization_id)


def order_payment_void(*, authorization_id: str, idempotency_key: str) -> None:
    """Voids the order's authorization, if it has one (outside any transaction)."""
    if authorization_id:
        payments.void(authorization_id=authorization_id, idempotency_key=idempotency_key)


def order_payment_capture(*, authorization_id: str, total: Decimal, idempotency_key: str) -> None:
    """Captures the order's authorization, if it has one (outside any transaction)."""
    if authorization_id:
        payments.capture(
            authorization_id=authorization_id, amount=total, idempotency_key=idempotency_key
        )


def order_paid_record(*, order_id: int, items: Iterable[Sequence[int]]) -> None:
    """reserved -> paid: the reserved stock is consumed (once: `stock_held` guards it)."""
    if order_transition(
        order_id=order_id,
        current=[OrderStatus.RESERVED],
        target=OrderStatus.PAID,
        held=True,
        stock_held=False,
    ):
        for product_id, quantity in _in_lock_order(items):
            _execute(_CONSUME_SQL, [quantity, quantity, product_id])


def _order_notify(*, order_id: int, kind: str, title: str, body: str, event: str) -> None:
    """Tells the order's owner, in the transition's transaction; "order:<id>:<event>"
    makes a repeated step notify once."""
    user_id = Order.objects.filter(pk=order_id).values_list("user_id", flat=True).first()
    if user_id is not None:
        notify_user(
            user_id=user_id,
            kind=kind,
            title=title,
            body=body,
            url=f"/orders/?order={order_id}",
            source_key=f"order:{order_id}:{event}",
        )


def order_confirm(*, order_id: int) -> None:
    if order_transition(
        order_id=order_id, current=[OrderStatus.PAID], target=OrderStatus.CONFIRMED
    ):
        _order_notify(
            order_id=order_id,
            kind=kinds.ORDER_CONFIRMED,
            title=f"Order {order_id} confirmed",
            body="Your payment went through and your order is confirmed.",
            event="confirmed",
        )
        email_order_confirmation(order_id=order_id)


def order_follow_saga(*, order_id: int, saga_status: str, failure_reason: str) -> None:
    """Keeps the order's status in step with its saga's end (in the saga's transaction):
    failed, cancelled or compensation_failed, with the saga's failure reason."""
    target = _SAGA_END.get(saga_status)
    if target is None:
        return
    reason = failure_reason or ("cancelled" if target == OrderStatus.CANCELLED else "")
    moved = order_transition(
        order_id=order_id,
        current=[s for s, targets in ORDER_MACHINE.transitions.items() if target in targets],
        target=target,
        failure_reason=reason[:64],
    )
    if moved and target == OrderStatus.FAILED:
        _order_notify(
            order_id=order_id,
            kind=kinds.ORDER_FAILED,
            title=f"Order {order_id} failed",
            body=f"Your order could not be completed ({reason or 'failed'}).",
            event="failed",
        )
