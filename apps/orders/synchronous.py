"""A synchronous checkout, for the benchmark's contrast only (never routed in the API
proper): stock and payment inside the request, so the client waits for the gateway and a
slow gateway holds a web worker for every order."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id

from . import payments
from .models import Order, OrderItem, OrderStatus, Product


class SynchronousCheckoutView(APIView):
    permission_classes = [IsAuthenticated]
    schema = None

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
