"""The order's transition table (ORDER_MACHINE) and its one writer, `order_transition`:
legal moves happen once, repeats change nothing, illegal moves raise. And the payment
client's refusal to call the gateway inside a transaction."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from apps.orders import payments, services
from apps.orders.models import ORDER_MACHINE, Order, OrderStatus, Product
from tasks.errors import IllegalTransition

from ..harness import free_port

ORDER_ALLOWED = {
    ("pending", "reserved"),
    ("pending", "failed"),
    ("pending", "cancelled"),
    ("pending", "compensation_failed"),
    ("reserved", "paid"),
    ("reserved", "failed"),
    ("reserved", "cancelled"),
    ("reserved", "compensation_failed"),
    ("paid", "confirmed"),
    ("paid", "failed"),
    ("paid", "compensation_failed"),
    ("compensation_failed", "failed"),
    ("compensation_failed", "cancelled"),
}


def test_the_order_table_allows_exactly_the_listed_moves() -> None:
    states = OrderStatus.values
    assert ORDER_MACHINE.states == set(states)
    for current in states:
        for target in states:
            if (current, target) in ORDER_ALLOWED:
                ORDER_MACHINE.check(current, target)
            else:
                with pytest.raises(IllegalTransition) as raised:
                    ORDER_MACHINE.check(current, target)
                assert (raised.value.current, raised.value.target) == (current, target)
    assert ORDER_MACHINE.terminal == {"confirmed", "failed", "cancelled"}


@pytest.fixture
def order(django_user_model: Any) -> Order:
    """A placed order (its saga's first message is never published: the test's
    transaction never commits) for 2 of a product with 5 on hand."""
    user = django_user_model.objects.create_user("buyer", password="pw")
    product = Product.objects.create(name="p", price="3.25", stock_on_hand=5)
    return services.order_place(
        user_id=user.pk,
        lines=[services.Line(product.pk, 2)],
        coupon_id=None,
        payment_token="tok_ok",
    )


def _state(order: Order) -> tuple[str, bool, int]:
    order.refresh_from_db()
    product = Product.objects.get(pk=order.items.get().product_id)
    return order.status, order.stock_held, product.stock_reserved


def _items(order: Order) -> list[list[int]]:
    return [[item.product_id, item.quantity] for item in order.items.all()]


@pytest.mark.django_db
def test_each_step_moves_the_order_once_and_a_repeat_changes_nothing(order: Order) -> None:
    services.order_stock_reserve(order_id=order.pk, items=_items(order))
    assert _state(order) == ("reserved", True, 2)
    services.order_stock_reserve(order_id=order.pk, items=_items(order))  # a repeat
    assert _state(order) == ("reserved", True, 2)

    services.order_paid_record(order_id=order.pk, items=_items(order))
    services.order_paid_record(order_id=order.pk, items=_items(order))
    assert _state(order) == ("paid", False, 0)
    assert Product.objects.get(pk=order.items.get().product_id).stock_on_hand == 3

    services.order_confirm(order_id=order.pk)
    services.order_confirm(order_id=order.pk)
    assert _state(order)[0] == "confirmed"


@pytest.mark.django_db
def test_illegal_order_moves_raise_and_change_nothing(order: Order) -> None:
    # Not in the table: refused before any SQL.
    with pytest.raises(IllegalTransition) as raised:
        services.order_transition(
            order_id=order.pk, current=[OrderStatus.PENDING], target=OrderStatus.CONFIRMED
        )
    assert (raised.value.current, raised.value.target) == ("pending", "confirmed")
    # In the table, but the order is not where the move starts: the state found is named.
    with pytest.raises(IllegalTransition) as raised:
        services.order_confirm(order_id=order.pk)
    assert (raised.value.current, raised.value.target) == ("pending", "confirmed")
    assert _state(order) == ("pending", False, 0)

    services.order_follow_saga(order_id=order.pk, saga_status="failed", failure_reason="x")
    order.refresh_from_db()
    assert (order.status, order.failure_reason) == ("failed", "x")
    # A failed order is terminal: no step moves it again.
    with pytest.raises(IllegalTransition) as raised:
        services.order_stock_reserve(order_id=order.pk, items=_items(order))
    assert raised.value.current == "failed"
    with pytest.raises(IllegalTransition):
        services.order_follow_saga(order_id=order.pk, saga_status="cancelled", failure_reason="")
    assert _state(order) == ("failed", False, 0)


@pytest.mark.django_db
def test_the_order_follows_its_saga_out_of_compensation_failed(order: Order) -> None:
    services.order_stock_reserve(order_id=order.pk, items=_items(order))
    follow = services.order_follow_saga
    follow(order_id=order.pk, saga_status="compensating", failure_reason="")  # not an end
    assert _state(order)[0] == "reserved"
    follow(order_id=order.pk, saga_status="compensation_failed", failure_reason="capture_failed")
    # Resumed, parked again: the order stays where it is.
    follow(order_id=order.pk, saga_status="compensation_failed", failure_reason="capture_failed")
    assert _state(order)[0] == "compensation_failed"
    follow(order_id=order.pk, saga_status="failed", failure_reason="capture_failed")
    order.refresh_from_db()
    assert (order.status, order.failure_reason) == ("failed", "capture_failed")


@pytest.mark.django_db
def test_the_payment_client_refuses_to_call_inside_a_transaction(settings: Any) -> None:
    # Nothing listens there: only the refusal can come before the call fails.
    settings.PAYMENT_GATEWAY_URL = f"http://127.0.0.1:{free_port()}"
    calls = [
        lambda: payments.authorize(
            reference="r", amount=Decimal("1.00"), token="tok_ok", idempotency_key="k"
        ),
        lambda: payments.capture(authorization_id="auth_1", idempotency_key="k"),
        lambda: payments.void(authorization_id="auth_1", idempotency_key="k"),
    ]
    for call in calls:
        with transaction.atomic(), pytest.raises(RuntimeError, match="inside a database trans"):
            call()
