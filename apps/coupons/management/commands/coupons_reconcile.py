from typing import Any

from django.core.management.base import BaseCommand

from apps.coupons import services
from apps.coupons.models import Campaign


class Command(BaseCommand):
    help = "Rebuild coupon gates in Redis from PostgreSQL (all campaigns, or the ids given)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("campaign_ids", nargs="*", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        ids = options["campaign_ids"] or list(Campaign.objects.values_list("id", flat=True))
        for campaign_id in ids:
            accepted = services.gate_rebuild(campaign_id=campaign_id)
            self.stdout.write(f"campaign {campaign_id}: gate rebuilt, {accepted} accepted")
