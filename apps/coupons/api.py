"""Coupons API: campaigns (staff), the issue request, polling, the caller's coupons."""

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
from apps.core.schema import error_responses

from . import selectors, services
from .models import Coupon

MAX_QUANTITY = 10_000_000


class CampaignIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    total_quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)
    discount_percent = serializers.IntegerField(min_value=1, max_value=100)
    starts_at = serializers.DateTimeField(required=False, allow_null=True)
    ends_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        starts, ends = attrs.get("starts_at"), attrs.get("ends_at")
        if starts and ends and ends <= starts:
            raise serializers.ValidationError({"ends_at": ["Must be after starts_at."]})
        return attrs


class CampaignOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    total_quantity = serializers.IntegerField()
    discount_percent = serializers.IntegerField()
    issued_count = serializers.IntegerField()
    remaining = serializers.IntegerField()
    starts_at = serializers.DateTimeField(allow_null=True)
    ends_at = serializers.DateTimeField(allow_null=True)


def _campaign_body(view: selectors.CampaignView) -> dict[str, Any]:
    campaign = view.campaign
    return CampaignOut(
        {
            "id": campaign.pk,
            "name": campaign.name,
            "total_quantity": campaign.total_quantity,
            "discount_percent": campaign.discount_percent,
            "issued_count": view.issued_count,
            "remaining": view.remaining,
            "starts_at": campaign.starts_at,
            "ends_at": campaign.ends_at,
        }
    ).data


class CouponOut(serializers.ModelSerializer):
    campaign = serializers.IntegerField(source="campaign_id")

    class Meta:
        model = Coupon
        fields = ["id", "campaign", "code", "discount_percent", "issued_at", "used_at"]


class IssueAccepted(serializers.Serializer):
    status = serializers.CharField()
    request_id = serializers.CharField()


class MyRequestOut(serializers.Serializer):
    status = serializers.ChoiceField(choices=["accepted", "issued"])
    coupon = CouponOut(required=False)


class CampaignListCreateView(ListAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = CampaignOut

    def get_permissions(self) -> Any:
        if self.request.method == "POST":
            return [IsAdminUser()]
        return super().get_permissions()

    def get_queryset(self) -> Any:
        return selectors.campaign_list()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        body = [_campaign_body(selectors.campaign_get(campaign_id=c.pk)) for c in page or []]
        return self.get_paginated_response(body)

    @extend_schema(
        request=CampaignIn,
        responses={201: CampaignOut, **error_responses(400, 401, 403)},
        summary="Create a campaign (staff)",
    )
    def post(self, request: Request) -> Response:
        data = CampaignIn(data=request.data)
        data.is_valid(raise_exception=True)
        campaign = services.campaign_create(**data.validated_data)
        body = _campaign_body(selectors.campaign_get(campaign_id=campaign.pk))
        return Response(body, status=status.HTTP_201_CREATED)


class CampaignUpdateIn(CampaignIn):
    name = serializers.CharField(max_length=200, required=False)
    total_quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY, required=False)
    discount_percent = serializers.IntegerField(min_value=1, max_value=100, required=False)


class CampaignDetailView(APIView):
    permission_classes = [IsAuthenticated]

    def get_permissions(self) -> Any:
        if self.request.method in ("PATCH", "DELETE"):
            return [IsAdminUser()]
        return super().get_permissions()

    @extend_schema(responses={200: CampaignOut, **error_responses(401, 404)})
    def get(self, request: Request, campaign_id: int) -> Response:
        return Response(_campaign_body(selectors.campaign_get(campaign_id=campaign_id)))

    @extend_schema(
        request=CampaignUpdateIn,
        responses={200: CampaignOut, **error_responses(400, 401, 403, 404)},
        summary="Change a campaign (staff); quantity never below what was accepted",
    )
    def patch(self, request: Request, campaign_id: int) -> Response:
        selectors.campaign_get(campaign_id=campaign_id)  # 404 first
        data = CampaignUpdateIn(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.campaign_update(campaign_id=campaign_id, **data.validated_data)
        return Response(_campaign_body(selectors.campaign_get(campaign_id=campaign_id)))

    @extend_schema(
        responses={
            204: None,
            **error_responses(401, 403, 404, 409, extra={409: ["campaign_running"]}),
        },
        summary="Delete a campaign that never ran (staff)",
    )
    def delete(self, request: Request, campaign_id: int) -> Response:
        selectors.campaign_get(campaign_id=campaign_id)
        services.campaign_delete(campaign_id=campaign_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IssueView(APIView):
    """The flash-sale endpoint: decided in Redis, recorded in PostgreSQL, finished later."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=None,
        responses={
            202: IssueAccepted,
            **error_responses(
                401,
                403,
                404,
                409,
                410,
                429,
                extra={403: ["campaign_not_active"], 409: ["already_issued"], 410: ["sold_out"]},
            ),
        },
        summary="Ask for the campaign's coupon (first come, first served)",
    )
    def post(self, request: Request, campaign_id: int) -> Response:
        accepted = services.coupon_request_accept(
            campaign_id=campaign_id, user_id=caller_id(request)
        )
        return Response(
            {"status": "accepted", "request_id": accepted.request_id},
            status=status.HTTP_202_ACCEPTED,
        )


class MyRequestView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: MyRequestOut, **error_responses(401, 404)})
    def get(self, request: Request, campaign_id: int) -> Response:
        _request, coupon = selectors.my_request(campaign_id=campaign_id, user_id=caller_id(request))
        if coupon is None:
            return Response({"status": "accepted"})
        return Response({"status": "issued", "coupon": CouponOut(coupon).data})


class MyCouponsView(ListAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = CouponOut

    def get_queryset(self) -> Any:
        return selectors.coupon_list_for_user(user_id=caller_id(self.request))
