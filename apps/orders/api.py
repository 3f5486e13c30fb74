"""Products and orders API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.core.pagination import SurgeCursorPagination
from apps.core.schema import error_responses

from . import selectors, services
from .models import Order

PAYMENT_TOKENS = [
    "tok_ok",
    "tok_decline",
    "tok_timeout",
    "tok_flaky",
    "tok_capture_fails",
    "tok_void_fails",
    "tok_slow",
]
MAX_QUANTITY = 1000
MAX_LINES = 50


class ProductOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    price = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)
    stock_available = serializers.IntegerField()


class ProductIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0)
    stock = serializers.IntegerField(min_value=0, max_value=10_000_000)


class LineIn(serializers.Serializer):
    product_id = serializers.IntegerField(min_value=1, max_value=2**62)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)


class OrderIn(serializers.Serializer):
    items = LineIn(many=True, allow_empty=False, max_length=MAX_LINES)  # type: ignore[call-arg]
    coupon_id = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=2**62
    )
    payment_token = serializers.ChoiceField(
        choices=PAYMENT_TOKENS, required=False, default="tok_ok"
    )

    def validate_items(self, items: list[dict[str, int]]) -> list[dict[str, int]]:
        ids = [item["product_id"] for item in items]
        if len(ids) != len(set(ids)):
            raise serializers.ValidationError("Each product may appear once.")
        return items


class OrderItemOut(serializers.Serializer):
    product_id = serializers.IntegerField()
    quantity = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)


class StepOut(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    error = serializers.CharField()
    at = serializers.DateTimeField()


class OrderOut(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    items = OrderItemOut(many=True)
    total = serializers.DecimalField(max_digits=14, decimal_places=2, coerce_to_string=True)
    coupon_id = serializers.IntegerField(allow_null=True)
    failure_reason = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    steps = StepOut(many=True)


class OrderAccepted(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()


def _order_body(order: Order, *, with_steps: bool = True) -> dict[str, Any]:
    return OrderOut(
        {
            "id": order.pk,
            "status": order.status,
            "items": list(order.items.all()),
            "total": order.total,
            "coupon_id": order.coupon_id,
            "failure_reason": order.failure_reason,
            "created_at": order.created_at,
            "steps": selectors.order_steps(order=order) if with_steps else [],
        }
    ).data


class ProductPagination(SurgeCursorPagination):
    ordering = "id"


class ProductListCreateView(ListAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = ProductOut
    pagination_class = ProductPagination

    def get_permissions(self) -> Any:
        if self.request.method == "POST":
            return [IsAdminUser()]
        return super().get_permissions()

    def get_queryset(self) -> Any:
        return selectors.product_list()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset()) or []
        body = [
            {"id": p.pk, "name": p.name, "price": p.price, "stock_available": p.available}
            for p in page
        ]
        return self.get_paginated_response(ProductOut(body, many=True).data)

    @extend_schema(request=ProductIn, responses={201: ProductOut, **error_responses(400, 401, 403)})
    def post(self, request: Request) -> Response:
        data = ProductIn(data=request.data)
        data.is_valid(raise_exception=True)
        product = services.product_create(**data.validated_data)
        body = {
            "id": product.pk,
            "name": product.name,
            "price": product.price,
            "stock_available": product.stock_available,
        }
        return Response(ProductOut(body).data, status=status.HTTP_201_CREATED)


class OrderListCreateView(ListAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = OrderOut

    def get_queryset(self) -> Any:
        return selectors.order_list_for_user(user_id=caller_id(self.request))

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset()) or []
        return self.get_paginated_response([_order_body(o, with_steps=False) for o in page])

    @extend_schema(
        request=OrderIn,
        responses={202: OrderAccepted, **error_responses(400, 401, 409, 422)},
        summary="Place an order: accepted at once, processed by the checkout saga",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = OrderIn(data=request.data)
        data.is_valid(raise_exception=True)
        order = services.order_place(
            user_id=caller_id(request),
            lines=[services.Line(**item) for item in data.validated_data["items"]],
            coupon_id=data.validated_data.get("coupon_id"),
            payment_token=data.validated_data["payment_token"],
        )
        return Response({"id": order.pk, "status": order.status}, status=status.HTTP_202_ACCEPTED)


class OrderDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: OrderOut, **error_responses(401, 404)})
    def get(self, request: Request, order_id: int) -> Response:
        order = selectors.order_get_for_user(order_id=order_id, user_id=caller_id(request))
        return Response(_order_body(order))


class OrderCancelView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=None,
        responses={
            202: OrderAccepted,
            **error_responses(401, 404, 409, extra={409: ["not_cancellable"]}),
        },
        summary="Cancel an order whose payment is not captured yet",
    )
    def post(self, request: Request, order_id: int) -> Response:
        order = selectors.order_get_for_user(order_id=order_id, user_id=caller_id(request))
        order = services.order_cancel(order=order)
        return Response({"id": order.pk, "status": order.status}, status=status.HTTP_202_ACCEPTED)
