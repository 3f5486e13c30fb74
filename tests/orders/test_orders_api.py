"""Orders API in-process: shapes, bad input, ownership. (The saga runs in the live tests.)"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.orders.models import Order, OrderItem, Product
from tasks.models import Saga

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("ann", password="pw")


@pytest.fixture
def client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def products() -> list[Product]:
    return [
        Product.objects.create(name="a", price="10.00", stock_on_hand=5),
        Product.objects.create(name="b", price="2.50", stock_on_hand=0),
    ]


def test_products_list_and_staff_create(client: APIClient, products, django_user_model) -> None:
    page = client.get("/api/products/").json()
    assert page["results"][0] == {
        "id": products[0].pk,
        "name": "a",
        "price": "10.00",
        "stock_available": 5,
    }
    assert (
        client.post(
            "/api/products/", {"name": "c", "price": "1.00", "stock": 3}, format="json"
        ).status_code
        == 403
    )
    staff = APIClient()
    staff.force_authenticate(
        django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    )
    created = staff.post(
        "/api/products/", {"name": "c", "price": "1.00", "stock": 3}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["stock_available"] == 3


def test_place_order_stores_everything_in_one_go(client: APIClient, products) -> None:
    body = {
        "items": [
            {"product_id": products[0].pk, "quantity": 2},
            {"product_id": products[1].pk, "quantity": 1},
        ]
    }
    response = client.post("/api/orders/", body, format="json")
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    order = Order.objects.get(pk=response.json()["id"])
    assert str(order.total) == "22.50"
    assert OrderItem.objects.filter(order=order).count() == 2
    saga = Saga.objects.get(ref=f"order:{order.pk}")
    assert saga.kind == "orders.checkout" and saga.status == "pending"
    detail = client.get(f"/api/orders/{order.pk}/").json()
    assert set(detail) >= {"id", "status", "items", "total", "failure_reason", "steps"}
    assert [s["name"] for s in detail["steps"]] == [
        "use_coupon",
        "reserve_stock",
        "authorize_payment",
        "capture_payment",
        "confirm",
    ]
    assert detail["total"] == "22.50"
    assert set(detail["steps"][0]) == {"name", "status", "attempts", "error", "at"}


@pytest.mark.parametrize(
    "items, field",
    [
        ([], "items"),
        ([{"product_id": 1, "quantity": 0}], "items.0.quantity"),
        ([{"product_id": 1, "quantity": -3}], "items.0.quantity"),
        ([{"product_id": 1, "quantity": 10**9}], "items.0.quantity"),
        ([{"product_id": "abc", "quantity": 1}], "items.0.product_id"),
        ([{"product_id": 10**30, "quantity": 1}], "items.0.product_id"),
        ("not a list", "items"),
    ],
)
def test_bad_items_are_400_invalid(client: APIClient, products, items, field) -> None:
    response = client.post("/api/orders/", {"items": items}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["fields"], response.json()
    assert Order.objects.count() == 0


def test_duplicate_and_unknown_products_and_token(client: APIClient, products) -> None:
    pid = products[0].pk
    dup = client.post(
        "/api/orders/", {"items": [{"product_id": pid, "quantity": 1}] * 2}, format="json"
    )
    assert dup.status_code == 400 and "items" in dup.json()["fields"]
    unknown = client.post(
        "/api/orders/", {"items": [{"product_id": 999999, "quantity": 1}]}, format="json"
    )
    assert unknown.status_code == 400 and "items" in unknown.json()["fields"]
    token = client.post(
        "/api/orders/",
        {"items": [{"product_id": pid, "quantity": 1}], "payment_token": "tok_nope"},
        format="json",
    )
    assert token.status_code == 400 and "payment_token" in token.json()["fields"]
    coupon = client.post(
        "/api/orders/",
        {"items": [{"product_id": pid, "quantity": 1}], "coupon_id": 12345},
        format="json",
    )
    assert coupon.status_code == 400 and "coupon_id" in coupon.json()["fields"]
    assert Order.objects.count() == 0 and Saga.objects.count() == 0


def test_another_users_order_is_404(client: APIClient, products, django_user_model) -> None:
    order_id = client.post(
        "/api/orders/", {"items": [{"product_id": products[0].pk, "quantity": 1}]}, format="json"
    ).json()["id"]
    other = APIClient()
    other.force_authenticate(django_user_model.objects.create_user("bob", password="pw"))
    assert other.get(f"/api/orders/{order_id}/").status_code == 404
    assert other.post(f"/api/orders/{order_id}/cancel/").status_code == 404


def test_idempotency_key_places_one_order(client: APIClient, products) -> None:
    body = {"items": [{"product_id": products[0].pk, "quantity": 1}]}
    first = client.post("/api/orders/", body, format="json", HTTP_IDEMPOTENCY_KEY="o-1")
    second = client.post("/api/orders/", body, format="json", HTTP_IDEMPOTENCY_KEY="o-1")
    assert first.content == second.content
    assert Order.objects.count() == 1
