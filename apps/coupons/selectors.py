"""Coupon reads."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django.http import Http404
from redis.exceptions import RedisError

from . import gate as gate_mod
from .models import Campaign, Coupon, CouponRequest


@dataclass(frozen=True)
class CampaignView:
    campaign: Campaign
    issued_count: int
    remaining: int


def campaign_get(*, campaign_id: int) -> CampaignView:
    """`remaining` is live from the gate when it is loaded (it counts acceptances not yet
    turned into coupons), else computed from PostgreSQL (also while Redis is unreachable:
    a read never needs the gate); both agree once drained."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        raise Http404
    try:
        remaining = gate_mod.gate_remaining(campaign_id)
    except RedisError:
        remaining = None
    if remaining is None:
        accepted = CouponRequest.objects.filter(campaign_id=campaign_id).count()
        remaining = campaign.total_quantity - accepted
    return CampaignView(campaign, campaign.issued_count, max(remaining, 0))


def campaign_list() -> QuerySet[Campaign]:
    return Campaign.objects.all()


def coupon_list_for_user(*, user_id: int) -> QuerySet[Coupon]:
    return Coupon.objects.filter(user_id=user_id)


def coupon_get_for_user(*, coupon_id: int, user_id: int) -> Coupon | None:
    return Coupon.objects.filter(pk=coupon_id, user_id=user_id).first()


def my_request(*, campaign_id: int, user_id: int) -> tuple[CouponRequest, Coupon | None]:
    request = CouponRequest.objects.filter(campaign_id=campaign_id, user_id=user_id).first()
    if request is None:
        raise Http404
    coupon = Coupon.objects.filter(campaign_id=campaign_id, user_id=user_id).first()
    return request, coupon
