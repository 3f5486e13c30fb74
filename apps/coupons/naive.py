"""The naive issue path, for the benchmark's comparison only (never routed in the API
proper): every request locks the campaign row, checks the count and inserts the coupon
inside the request. Correct, but every request in the sale queues on one row lock."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id

from .models import Campaign, Coupon
from .services import _new_code


class NaiveIssueView(APIView):
    permission_classes = [IsAuthenticated]
    schema = None

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
                code=_new_code(),
                discount_percent=campaign.discount_percent,
                issued_at=timezone.now(),
            )
        return Response({"status": "issued"}, status=status.HTTP_202_ACCEPTED)
