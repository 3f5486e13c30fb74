"""The checkout saga: use_coupon -> reserve_stock -> authorize_payment -> capture_payment
-> confirm, with return_coupon, release_stock and void_authorization as compensations.

This module only wires steps to services (apps/orders/services.py), reading their
arguments from the saga's context, written when the order was placed (`order_place`).
The database steps are local: their writes commit with the step's success, exactly once.
The payment steps are remote: the gateway call runs outside any transaction and carries
the step's idempotency key, so a retried call never charges twice; what it changes in the
database is recorded afterwards, with the step's success. Payment errors carry the order's
failure reason (`payment_declined`, `capture_failed`, `payment_timeout` once the retries on
timeouts run out); a step may also fail with `out_of_stock` or `coupon_unavailable`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tasks.models import Saga
from tasks.saga import Step, StepContext, StepKind, define_saga

from . import services
from .models import CHECKOUT_SAGA_KIND


def _order_id(ctx: StepContext) -> int:
    return int(ctx.context["order_id"])


def use_coupon(ctx: StepContext) -> None:
    services.order_coupon_use(order_id=_order_id(ctx), coupon_id=ctx.context["coupon_id"])


def return_coupon(ctx: StepContext) -> None:
    services.order_coupon_return(order_id=_order_id(ctx), coupon_id=ctx.context["coupon_id"])


def reserve_stock(ctx: StepContext) -> None:
    services.order_stock_reserve(order_id=_order_id(ctx), items=ctx.context["items"])


def release_stock(ctx: StepContext) -> None:
    services.order_stock_release(order_id=_order_id(ctx), items=ctx.context["items"])


def authorize_payment(ctx: StepContext) -> dict[str, Any]:
    authorization_id = services.order_payment_authorize(
        order_id=_order_id(ctx),
        total=Decimal(ctx.context["total"]),
        payment_token=ctx.context["payment_token"],
        idempotency_key=ctx.idempotency_key,
    )
    return {"authorization_id": authorization_id}


def record_authorization(ctx: StepContext) -> None:
    services.order_authorization_record(
        order_id=_order_id(ctx), authorization_id=ctx.context["authorization_id"]
    )


def void_authorization(ctx: StepContext) -> None:
    services.order_payment_void(
        authorization_id=ctx.context.get("authorization_id", ""),
        idempotency_key=ctx.idempotency_key,
    )


def capture_payment(ctx: StepContext) -> None:
    """The point of no return: once captured, the reserved stock is consumed."""
    services.order_payment_capture(
        authorization_id=ctx.context.get("authorization_id", ""),
        total=Decimal(ctx.context["total"]),
        idempotency_key=ctx.idempotency_key,
    )


def record_capture(ctx: StepContext) -> None:
    services.order_paid_record(order_id=_order_id(ctx), items=ctx.context["items"])


def confirm(ctx: StepContext) -> None:
    services.order_confirm(order_id=_order_id(ctx))


def _follow_saga(saga: Saga, status: str) -> None:
    services.order_follow_saga(
        order_id=int(saga.context["order_id"]),
        saga_status=status,
        failure_reason=saga.failure_reason,
    )


define_saga(
    CHECKOUT_SAGA_KIND,
    steps=[
        Step(
            "use_coupon",
            forward=use_coupon,
            compensate=return_coupon,
            compensate_name="return_coupon",
            # Most orders name no coupon: their step is `skipped`, not a transaction spent
            # on nothing.
            skip_if=lambda context: context["coupon_id"] is None,
        ),
        Step(
            "reserve_stock",
            forward=reserve_stock,
            compensate=release_stock,
            compensate_name="release_stock",
        ),
        Step(
            "authorize_payment",
            kind=StepKind.REMOTE,
            forward=authorize_payment,
            record=record_authorization,
            compensate=void_authorization,
            compensate_name="void_authorization",
            max_attempts=4,
        ),
        Step(
            "capture_payment",
            kind=StepKind.REMOTE,
            forward=capture_payment,
            record=record_capture,
            max_attempts=4,
            point_of_no_return=True,
        ),
        Step("confirm", forward=confirm),
    ],
    on_status=_follow_saga,
)
