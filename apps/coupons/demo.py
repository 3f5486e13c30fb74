"""A running demo campaign for `make run`."""

from typing import Any

from . import services
from .models import Campaign


def load(stdout: Any) -> None:
    if not Campaign.objects.filter(name="Demo flash sale").exists():
        services.campaign_create(name="Demo flash sale", total_quantity=100, discount_percent=20)
    campaign = Campaign.objects.get(name="Demo flash sale")
    stdout.write(
        f"demo coupon campaign {campaign.pk}: POST /api/coupons/campaigns/{campaign.pk}/issue/"
    )
