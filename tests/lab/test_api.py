"""The lab's endpoints on a real web process with the lab on: the baselines answer, the
naive issue and the synchronous checkout do their work inside the request."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from apps.coupons.models import Campaign, Coupon
from apps.orders.models import Order, Product

from ..harness import ApiClient, LiveProcess

pytestmark = pytest.mark.live


def test_the_lab_answers_where_the_bench_calls_it(lab_web: LiveProcess) -> None:
    base_url = lab_web.url or ""
    user = ApiClient(base_url).register()
    assert requests.get(f"{base_url}/bench/noop/", timeout=15).json() == {"ok": True}
    assert requests.post(f"{base_url}/api/bench/noop/", timeout=15).json() == {"ok": True}
    assert user.get("/api/bench/one-query/").status_code == 200
    for path in ("/api/bench/noop-auth/", "/api/bench/noop-stock-auth/"):
        assert user.post(path, {}).json() == {"ok": True, "user": user.user_id}
        assert ApiClient(base_url).post(path, {}).status_code == 401

    campaign = Campaign.objects.create(name="lab", total_quantity=1, discount_percent=10)
    issue = f"/api/bench/coupons/{campaign.pk}/naive-issue/"
    assert user.post(issue, {}).status_code == 202
    assert Coupon.objects.filter(campaign=campaign, user_id=user.user_id).count() == 1
    assert user.post(issue, {}).json() == {"code": "already_issued"}
    assert ApiClient(base_url).register().post(issue, {}).json() == {"code": "sold_out"}

    product = Product.objects.create(name="lab", price=Decimal("2.50"), stock_on_hand=3)
    body = {"items": [{"product_id": product.pk, "quantity": 2}], "payment_token": "tok_ok"}
    checkout = user.post("/api/bench/orders/synchronous/", body)
    assert checkout.status_code == 201, checkout.text
    order = Order.objects.get(pk=checkout.json()["id"])
    assert (order.status, order.total) == ("confirmed", Decimal("5.00"))
    assert checkout.json() == {"id": order.pk, "status": "confirmed"}
    product.refresh_from_db()
    assert product.stock_on_hand == 1
