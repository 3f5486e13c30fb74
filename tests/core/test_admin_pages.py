"""Every page an operator can open in the admin renders: for each registered model, its list
(also searched, when it has a search box), its add page when adding is allowed, and the change
page of a real row, with the demo data and one of each kind of work in the database."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from apps.coupons import services as coupons
from apps.coupons.models import Campaign
from apps.orders.models import Product
from apps.orders.services import Line, order_place
from apps.wallets import services as wallets
from tasks.outbox import outbox_enqueue

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(django_user_model: Any, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "admin")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "admin-pages-test")
    call_command("bootstrap", stdout=io.StringIO())  # operator account + demo data
    client = Client()
    client.force_login(django_user_model.objects.get(username="admin"))
    return client


def _some_of_everything(user_id: int) -> None:
    campaign = Campaign.objects.get(name="Demo flash sale")
    coupons.coupon_request_accept(campaign_id=campaign.pk, user_id=user_id)
    coupons.coupons_persist_batch(campaign_id=campaign.pk)
    product = Product.objects.order_by("id").first()
    assert product is not None
    order_place(
        user_id=user_id, lines=[Line(product.pk, 1)], coupon_id=None, payment_token="tok_ok"
    )
    wallet = wallets.wallet_create(owner_id=user_id)
    wallets.transaction_accept(wallet_id=wallet.pk, kind="deposit", amount=Decimal("5.00"))
    outbox_enqueue("ops.noop")


def test_every_admin_page_renders(operator: Client, django_user_model: Any) -> None:
    _some_of_everything(django_user_model.objects.get(username="demo").pk)
    opened = []
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = reverse("admin:{}_{}_changelist".format(*info))
        response = operator.get(changelist)
        assert response.status_code == 200, changelist
        opened.append(changelist)
        if model_admin.search_fields:
            response = operator.get(changelist, {"q": "demo"})
            assert response.status_code == 200, f"{changelist}?q=demo"
        if model_admin.has_add_permission(response.wsgi_request):
            add = reverse("admin:{}_{}_add".format(*info))
            assert operator.get(add).status_code == 200, add
        row = model._default_manager.order_by("pk").first()
        if row is not None:
            change = reverse("admin:{}_{}_change".format(*info), args=[row.pk])
            assert operator.get(change).status_code == 200, change
    # The models this project's operators work with are all there.
    for label in ("coupons/campaign", "orders/order", "wallets/wallet", "tasks/deadletter"):
        assert any(f"/admin/{label}/" in path for path in opened), label
