"""The lab over HTTP: the bench's no-op baselines and the counter-example variants.

None of these is in the API document (`schema = None`), and none is routed unless the lab
is on (urls.py, `LAB_ENABLED`).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.coupons import gate as gate_mod
from apps.coupons.models import Campaign, Coupon
from apps.coupons.services import drain_lease_ms
from apps.orders import payments
from apps.orders.models import Order, OrderItem, OrderStatus, Product
from apps.wallets import selectors as wallet_selectors
from apps.wallets.api import TransactionIn

from . import services


class _NoSchema(APIView):
    schema = None  # bench plumbing, kept out of the public API document


# --- Baselines: each does as little as its layer allows ----------------------------------


@csrf_exempt
def plain_noop(request: HttpRequest) -> JsonResponse:
    """Plain Django: no DRF, no auth."""
    return JsonResponse({"ok": True})


class AnonymousNoopView(_NoSchema):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        return Response({"ok": True})


class AuthenticatedNoopView(_NoSchema):
    """The API's real authentication, and nothing else."""

    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"ok": True, "user": request.user.pk})


class StockTokenAuthNoopView(_NoSchema):
    """DRF's own TokenAuthentication (a query per request), for comparison only."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"ok": True, "user": request.user.pk})


class OneQueryView(_NoSchema):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        exists = get_user_model().objects.filter(pk=1).exists()
        return Response({"ok": exists})


# --- Coupons: the naive issue and the gate-only ablation --------------------------------


class NaiveIssueView(_NoSchema):
    """The naive path: every request locks the campaign row, checks the count and inserts
    the coupon inside the request. Correct, but every request in the sale queues on one
    row lock."""

    permission_classes = [IsAuthenticated]

    def post(self, request: Request, campaign_id: int) -> Response:
        user_id = caller_id(request)
        with transaction.atomic():
            campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
            if Coupon.objects.filter(campaign_id=campaign_id, user_id=user_id).exists():
                return Response({"code": "already_issued"}, status=409)
            if campaign.issued_count >= campaign.total_quantity:
                return Response({"code": "sold_out"}, status=410)
            Coupon.objects.create(
                campaign_id=campaign_id,
                user_id=user_id,
                code=services.coupon_code_new(),
                discount_percent=campaign.discount_percent,
                issued_at=timezone.now(),
            )
        return Response({"status": "issued"}, status=status.HTTP_202_ACCEPTED)


class GateOnlyIssueView(_NoSchema):
    """An ablation: the Redis gate's decision without the durable record. NOT a valid issue
    path (a Redis restart would forget its acceptances); it shows what the one PostgreSQL
    commit per acceptance costs against the no-op."""

    permission_classes = [IsAuthenticated]

    def post(self, request: Request, campaign_id: int) -> Response:
        verdict = gate_mod.gate().accept(
            campaign_id=campaign_id,
            user_id=caller_id(request),
            now_ms=int(time.time() * 1000),
            rate_limit=settings.COUPON_ISSUE_RATE_LIMIT,
            rate_window_ms=settings.COUPON_ISSUE_RATE_WINDOW_MS,
            drain_lease_ms=drain_lease_ms(),
        )
        if verdict.kind != "accepted":
            return Response({"code": verdict.kind}, status=409)
        return Response({"status": "accepted"}, status=status.HTTP_202_ACCEPTED)


# --- Orders: a synchronous checkout -----------------------------------------------------


class SynchronousCheckoutView(_NoSchema):
    """Stock and payment inside the request, so the client waits for the gateway and a
    slow gateway holds a web worker for every order."""

    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        data: Any = request.data  # bench plumbing: trusted input
        product_id = int(data["items"][0]["product_id"])
        quantity = int(data["items"][0]["quantity"])
        token = str(data.get("payment_token", "tok_ok"))
        with transaction.atomic():
            product = Product.objects.select_for_update().get(pk=product_id)
            if product.stock_available < quantity:
                return Response({"code": "out_of_stock"}, status=409)
            total = (product.price * quantity).quantize(Decimal("0.01"))
            order = Order.objects.create(
                user_id=caller_id(request), subtotal=total, total=total, payment_token=token
            )
            OrderItem.objects.create(
                order=order, product=product, quantity=quantity, unit_price=product.price
            )
            Product.objects.filter(pk=product_id).update(
                stock_on_hand=F("stock_on_hand") - quantity
            )
        authorization = payments.authorize(
            reference=f"sync:{order.pk}",
            amount=total,
            token=token,
            idempotency_key=f"sync-{order.pk}-a",
        )
        payments.capture(
            authorization_id=authorization, amount=total, idempotency_key=f"sync-{order.pk}-c"
        )
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.CONFIRMED)
        return Response({"id": order.pk, "status": "confirmed"}, status=status.HTTP_201_CREATED)


# --- Wallets: the naive apply -----------------------------------------------------------


class NaiveTransactionView(_NoSchema):
    """POST /api/wallets/{id}/transactions/ to the letter (body, answers, errors,
    Idempotency-Key), but the transaction is applied by a naive task of its own
    (`services.transaction_accept_naive`) instead of the wallet's ordered drain."""

    permission_classes = [IsAuthenticated]

    @idempotent
    def post(self, request: Request, wallet_id: int) -> Response:
        user_id = caller_id(request)
        data = TransactionIn(data=request.data)
        if not data.is_valid():
            # Another user's wallet is a 404 whatever the body says.
            wallet_selectors.wallet_get_for_user(wallet_id=wallet_id, user_id=user_id)
            raise serializers.ValidationError(data.errors)
        accepted = services.transaction_accept_naive(
            wallet_id=wallet_id,
            owner_id=user_id,
            kind=data.validated_data["kind"],
            amount=data.validated_data["amount"],
        )
        body = {"id": accepted.pk, "seq": accepted.seq, "status": accepted.status}
        return Response(body, status=status.HTTP_202_ACCEPTED)
