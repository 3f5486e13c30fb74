"""Campaigns, accepted requests and coupons.

The bound "never more coupons than `total_quantity`" is kept by PostgreSQL itself: a
statement-level trigger (migration 0002) adds the number of inserted coupons to
`issued_count`, and a check constraint keeps `issued_count <= total_quantity`. Workers
insert coupons in batches, so the campaign row is written once per batch, never once per
request.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Campaign(models.Model):
    name = models.CharField(max_length=200)
    total_quantity = models.PositiveIntegerField()
    discount_percent = models.PositiveSmallIntegerField()
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    # Maintained by the database trigger, never by Python.
    issued_count = models.PositiveIntegerField(default=0, editable=False)
    # Changes whenever the Redis gate is rebuilt; an acceptance decided by an older gate
    # is not recorded (see services.coupon_request_accept).
    gate_epoch = models.CharField(max_length=32, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(total_quantity__gte=1), name="campaign_quantity_positive"
            ),
            models.CheckConstraint(
                condition=Q(discount_percent__gte=1, discount_percent__lte=100),
                name="campaign_discount_range",
            ),
            models.CheckConstraint(
                condition=Q(issued_count__lte=F("total_quantity")),
                name="campaign_issued_within_total",
            ),
            models.CheckConstraint(
                condition=Q(starts_at__isnull=True)
                | Q(ends_at__isnull=True)
                | Q(ends_at__gt=F("starts_at")),
                name="campaign_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class CouponRequest(models.Model):
    """An accepted request: written (one append-only insert) before the 202 is sent, so
    PostgreSQL remembers every acceptance Redis decided, and Celery turns it into a coupon."""

    class Status(models.TextChoices):
        ACCEPTED = "accepted"
        ISSUED = "issued"

    # No index of its own: the unique (campaign, user) index starts with the campaign.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.PROTECT, related_name="requests", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACCEPTED)
    request_id = models.CharField(max_length=128, blank=True)
    accepted_at = models.DateTimeField()
    issued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "user"], name="coupon_request_once_per_user"
            )
        ]
        indexes = [
            models.Index(
                fields=["campaign", "id"],
                condition=Q(status="accepted"),
                name="coupon_request_pending",
            )
        ]

    def __str__(self) -> str:
        return f"request {self.pk} ({self.status})"


class Coupon(models.Model):
    # Indexes cost every insert of the drain: none on the campaign of its own (the unique
    # (campaign, user) index starts with it), and the code's uniqueness as a constraint
    # (a plain unique field would add a second, LIKE-only index on PostgreSQL).
    campaign = models.ForeignKey(
        Campaign, on_delete=models.PROTECT, related_name="coupons", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="coupons"
    )
    code = models.CharField(max_length=32)
    discount_percent = models.PositiveSmallIntegerField()
    issued_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.CharField(max_length=64, blank=True)  # e.g. "order:42"

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "user"], name="coupon_once_per_user"),
            models.UniqueConstraint(fields=["code"], name="coupon_code_unique"),
            models.CheckConstraint(
                condition=Q(used_at__isnull=True, used_by="")
                | Q(used_at__isnull=False) & ~Q(used_by=""),
                name="coupon_used_consistently",
            ),
        ]

    def __str__(self) -> str:
        return self.code
