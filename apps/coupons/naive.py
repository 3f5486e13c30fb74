"""Bench-only issue variants (never routed in the API proper).

The naive path: every request locks the campaign row, checks the count and inserts the
coupon inside the request. Correct, but every request in the sale queues on one row lock.
The gate-only ablation: Surge's decision without its durable record (not correct)."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id

from . import gate as gate_mod
from .models import Campaign, Coupon
from .services import _new_code, drain_lease_ms


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


class GateOnlyIssueView(APIView):
    """An ablation, for the benchmark only: the Redis gate's decision without the durable
    record. NOT a valid issue path (a Redis restart would forget its acceptances); it
    shows what the one PostgreSQL commit per acceptance costs against the no-op."""

    permission_classes = [IsAuthenticated]
    schema = None

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
