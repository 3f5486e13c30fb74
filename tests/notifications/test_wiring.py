"""The other apps notify through notify_user / notify_users, once per source."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from apps.coupons import services as coupons
from apps.coupons.models import Coupon, CouponRequest
from apps.notifications import kinds
from apps.notifications.models import Notification
from apps.orders import services as orders
from apps.orders.models import Order, Product
from apps.wallets import services as wallets

pytestmark = pytest.mark.django_db


def test_each_coupon_issued_notifies_its_owner_once(django_user_model: Any) -> None:
    campaign = coupons.campaign_create(name="sale", total_quantity=40, discount_percent=15)
    users = [django_user_model.objects.create_user(f"c{i}", password="pw") for i in range(30)]
    for user in users:
        coupons.coupon_request_accept(campaign_id=campaign.pk, user_id=user.pk)
    assert coupons.coupons_persist_batch(campaign_id=campaign.pk, batch_size=20) == 20
    assert coupons.coupons_persist_batch(campaign_id=campaign.pk, batch_size=20) == 10
    # Redelivered batches (the requests are issued already) notify nobody again.
    assert coupons.coupons_persist_batch(campaign_id=campaign.pk, batch_size=20) == 0
    notes = Notification.objects.filter(kind=kinds.COUPON_ISSUED)
    by_key = {n.source_key: n for n in notes}
    issued = list(Coupon.objects.filter(campaign=campaign))
    assert len(issued) == 30 and len(by_key) == 30 and notes.count() == 30
    for coupon in issued:
        note = by_key[f"coupon:{coupon.pk}"]
        assert note.user_id == coupon.user_id
        assert coupon.code in note.title and "15%" in note.body


def test_a_batch_whose_requests_were_reset_still_notifies_once(django_user_model: Any) -> None:
    """The worst redelivery: the requests look accepted again (the coupons exist): the
    coupon INSERT conflicts, and so would the notification."""
    campaign = coupons.campaign_create(name="sale", total_quantity=5, discount_percent=10)
    user = django_user_model.objects.create_user("one", password="pw")
    coupons.coupon_request_accept(campaign_id=campaign.pk, user_id=user.pk)
    assert coupons.coupons_persist_batch(campaign_id=campaign.pk) == 1
    CouponRequest.objects.update(status=CouponRequest.Status.ACCEPTED)
    assert coupons.coupons_persist_batch(campaign_id=campaign.pk) == 1
    assert Coupon.objects.count() == 1
    assert Notification.objects.filter(user=user).count() == 1


@pytest.fixture
def order(django_user_model: Any) -> Order:
    user = django_user_model.objects.create_user("buyer", password="pw")
    product = Product.objects.create(name="p", price="3.25", stock_on_hand=5)
    return orders.order_place(
        user_id=user.pk,
        lines=[orders.Line(product.pk, 2)],
        coupon_id=None,
        payment_token="tok_ok",
    )


def _items(order: Order) -> list[list[int]]:
    return [[item.product_id, item.quantity] for item in order.items.all()]


def test_an_order_confirmed_notifies_once(order: Order) -> None:
    orders.order_stock_reserve(order_id=order.pk, items=_items(order))
    orders.order_paid_record(order_id=order.pk, items=_items(order))
    orders.order_confirm(order_id=order.pk)
    orders.order_confirm(order_id=order.pk)  # a repeated step
    note = Notification.objects.get()
    assert (note.user_id, note.kind, note.source_key) == (
        order.user_id,
        kinds.ORDER_CONFIRMED,
        f"order:{order.pk}:confirmed",
    )


def test_an_order_failed_notifies_once_even_with_in_app_off(order: Order) -> None:
    from apps.notifications.services import preferences_set

    preferences_set(user_id=order.user_id, changes={kinds.ORDER_FAILED: {"in_app": False}})
    orders.order_follow_saga(order_id=order.pk, saga_status="failed", failure_reason="declined")
    orders.order_follow_saga(order_id=order.pk, saga_status="failed", failure_reason="declined")
    note = Notification.objects.get()
    assert (note.kind, note.source_key) == (kinds.ORDER_FAILED, f"order:{order.pk}:failed")
    assert "declined" in note.body


def test_a_cancelled_order_notifies_nobody(order: Order) -> None:
    orders.order_follow_saga(order_id=order.pk, saga_status="cancelled", failure_reason="")
    assert not Notification.objects.exists()


def test_a_rejected_withdrawal_notifies_its_owner_once(django_user_model: Any) -> None:
    owner = django_user_model.objects.create_user("w", password="pw")
    wallet = wallets.wallet_create(owner_id=owner.pk)
    wallets.transaction_accept(wallet_id=wallet.pk, kind="deposit", amount=Decimal("5.00"))
    rejected = wallets.transaction_accept(
        wallet_id=wallet.pk, kind="withdrawal", amount=Decimal("9.00")
    )
    wallets.transaction_accept(wallet_id=wallet.pk, kind="withdrawal", amount=Decimal("1.00"))
    assert wallets.transactions_apply(wallet_id=wallet.pk).decided == 3
    assert wallets.transactions_apply(wallet_id=wallet.pk).decided == 0
    note = Notification.objects.get()
    assert (note.user_id, note.kind, note.source_key) == (
        owner.pk,
        kinds.WALLET_WITHDRAWAL_REJECTED,
        f"wallet-transaction:{rejected.pk}:rejected",
    )
    assert "9.00" in note.body and "insufficient_funds" in note.body


@pytest.fixture
def drain_signal_free() -> Iterator[None]:
    from apps.core.redis import get_redis

    get_redis().delete(*wallets.DRAIN.redis_keys())
    yield
    get_redis().delete(*wallets.DRAIN.redis_keys())


def test_the_wallets_drain_notifies_too(django_user_model: Any, drain_signal_free: None) -> None:
    owner = django_user_model.objects.create_user("d", password="pw")
    wallet = wallets.wallet_create(owner_id=owner.pk)
    wallets.transaction_accept(wallet_id=wallet.pk, kind="withdrawal", amount=Decimal("1.00"))
    wallets.transaction_accept(wallet_id=wallet.pk, kind="deposit", amount=Decimal("1.00"))
    assert wallets.transactions_drain() == 2
    assert (
        Notification.objects.filter(user=owner, kind=kinds.WALLET_WITHDRAWAL_REJECTED).count() == 1
    )
