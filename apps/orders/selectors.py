from __future__ import annotations

from typing import Any

from django.db.models import F, QuerySet
from django.http import Http404

from tasks.saga import saga_get_by_ref, saga_step_list

from .models import CHECKOUT_SAGA_KIND, Order, Product


def product_list() -> QuerySet[Product]:
    return Product.objects.annotate(available=F("stock_on_hand") - F("stock_reserved")).order_by(
        "id"
    )


def order_get_for_user(*, order_id: int, user_id: int) -> Order:
    """Another user's order is a 404."""
    order = Order.objects.filter(pk=order_id, user_id=user_id).prefetch_related("items").first()
    if order is None:
        raise Http404
    return order


def order_list_for_user(*, user_id: int) -> QuerySet[Order]:
    return Order.objects.filter(user_id=user_id).prefetch_related("items")


def order_steps(*, order: Order) -> list[dict[str, Any]]:
    """The saga's timeline: forward steps and compensations as they ran."""
    saga = saga_get_by_ref(kind=CHECKOUT_SAGA_KIND, ref=order.saga_ref)
    if saga is None:
        return []
    return [
        {
            "name": step.name,
            "status": step.status,
            "attempts": step.attempts,
            "error": step.error,
            "at": step.at,
        }
        for step in saga_step_list(saga_id=saga.pk)
    ]
