"""With Redis down, the API still answers every request with JSON and a code from the
contract: work that needs only PostgreSQL is accepted (202 means durable: PostgreSQL holds
it, and the sweepers send it once Redis is back), what Redis must decide answers 503
`service_unavailable` with Retry-After. Never a 500."""

from __future__ import annotations

import pytest

from apps.coupons import services as coupons
from apps.orders.models import Product
from config.devservices import PrivateRedis

from ..harness import ApiClient, LiveProcess, wait_ready

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_the_api_answers_with_redis_down(
    api: ApiClient, live_web: LiveProcess, live_worker: LiveProcess, private_redis: PrivateRedis
) -> None:
    user = api.register()
    campaign = coupons.campaign_create(name="redis down", total_quantity=5, discount_percent=5)
    product = Product.objects.create(name="redis down", price="2.50", stock_on_hand=10)
    wallet = user.post("/api/wallets/").json()["id"]
    private_redis.stop()
    try:
        answers = {
            "register": ApiClient(live_web.url or "").post(
                "/api/auth/register/", {"username": "nored", "password": "pw-nored-1"}
            ),
            "token": ApiClient(live_web.url or "").post(
                "/api/auth/token/", {"username": user.username, "password": "pw"}
            ),
            "order": user.post(
                "/api/orders/",
                {"items": [{"product_id": product.pk, "quantity": 1}], "payment_token": "tok_ok"},
            ),
            "wallet deposit": user.post(
                f"/api/wallets/{wallet}/transactions/", {"kind": "deposit", "amount": "5.00"}
            ),
            "campaign": user.get(f"/api/coupons/campaigns/{campaign.pk}/"),
            "coupon issue": user.post(f"/api/coupons/campaigns/{campaign.pk}/issue/"),
            "orders list": user.get("/api/orders/"),
        }
    finally:
        private_redis.start()
        # Everything reconnects by itself (the worker too) once Redis is back.
        wait_ready(live_web.url or "", what="readiness after Redis came back")
    codes = {name: response.status_code for name, response in answers.items()}
    assert codes == {
        # The login rate limit lives in Redis: without it, logins wait rather than go
        # unlimited (a limiter that fails open is one an attacker can switch off).
        "register": 503,
        "token": 503,
        # PostgreSQL holds the accepted work; the sweepers publish it when Redis is back.
        "order": 202,
        "wallet deposit": 202,
        # Reads come from PostgreSQL.
        "campaign": 200,
        "orders list": 200,
        # First come, first served is decided in Redis: no gate, no decision.
        "coupon issue": 503,
    }, {name: response.text[:200] for name, response in answers.items()}
    for response in answers.values():
        if response.status_code == 503:
            assert response.json()["code"] == "service_unavailable"
            assert response.headers["Retry-After"] == "1"
    assert answers["campaign"].json()["remaining"] == 5
