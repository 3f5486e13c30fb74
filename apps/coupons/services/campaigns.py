"""Campaigns and their Redis gate: create, change, delete, rebuild, reconcile; and a
coupon's use by an order."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError

from .. import gate as gate_mod
from ..errors import CouponError
from ..models import Campaign, Coupon, CouponRequest

logger = logging.getLogger(__name__)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


# --- Campaigns ----------------------------------------------------------------------------


def _validate_window(starts_at: datetime | None, ends_at: datetime | None) -> None:
    if starts_at and ends_at and ends_at <= starts_at:
        raise SurgeError(
            ErrorCode.INVALID, "Invalid input.", fields={"ends_at": ["Must be after starts_at."]}
        )


def campaign_create(
    *,
    name: str,
    total_quantity: int,
    discount_percent: int,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> Campaign:
    _validate_window(starts_at, ends_at)
    campaign = Campaign.objects.create(
        name=name,
        total_quantity=total_quantity,
        discount_percent=discount_percent,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    gate_rebuild(campaign_id=campaign.pk)
    return campaign


def campaign_update(*, campaign_id: int, **changes: Any) -> Campaign:
    """Quantity may not drop below what was accepted already; the gate follows."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        for field, value in changes.items():
            setattr(campaign, field, value)
        _validate_window(campaign.starts_at, campaign.ends_at)
        accepted = CouponRequest.objects.filter(campaign_id=campaign_id).count()
        if campaign.total_quantity < accepted:
            raise SurgeError(
                ErrorCode.INVALID,
                "Invalid input.",
                fields={"total_quantity": [f"Already {accepted} accepted; cannot go below."]},
            )
        campaign.save()
    gate_rebuild(campaign_id=campaign_id)
    return campaign


def campaign_delete(*, campaign_id: int) -> None:
    """Only a campaign nobody took part in, and that is not running, may go."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        now = timezone.now()
        running = (campaign.starts_at is None or campaign.starts_at <= now) and (
            campaign.ends_at is None or now < campaign.ends_at
        )
        if running or CouponRequest.objects.filter(campaign_id=campaign_id).exists():
            raise SurgeError(
                CouponError.CAMPAIGN_RUNNING,
                "A running campaign, or one with accepted requests, cannot be deleted.",
                status=409,
            )
        campaign.delete()
    gate_mod.gate_delete(campaign_id)


# --- The gate -----------------------------------------------------------------------------


def gate_rebuild(*, campaign_id: int) -> int:
    """Writes the Redis gate from PostgreSQL with a new epoch; returns how many were
    accepted. Holding SHARE on the requests table waits for acceptances being recorded and
    holds new ones back until the new epoch is committed, so none is lost or counted twice."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {CouponRequest._meta.db_table} IN SHARE MODE")
        epoch = uuid.uuid4().hex
        Campaign.objects.filter(pk=campaign_id).update(gate_epoch=epoch)
        user_ids = list(
            CouponRequest.objects.filter(campaign_id=campaign_id).values_list("user_id", flat=True)
        )
        gate_mod.gate_write(
            campaign_id=campaign_id,
            epoch=epoch,
            total=campaign.total_quantity,
            user_ids=user_ids,
            starts_ms=_ms(campaign.starts_at),
            ends_ms=_ms(campaign.ends_at),
        )
    logger.info("coupon gate rebuilt campaign=%s accepted=%s", campaign_id, len(user_ids))
    return len(user_ids)


def gate_ensure(*, campaign_id: int) -> None:
    """Rebuild the gate if it is missing (first use, or Redis lost it); one rebuilder."""
    deadline = time.monotonic() + 5
    while not gate_mod.gate_exists(campaign_id):
        if gate_mod.rebuild_lock(campaign_id):
            try:
                if not gate_mod.gate_exists(campaign_id):
                    gate_rebuild(campaign_id=campaign_id)
            finally:
                gate_mod.rebuild_unlock(campaign_id)
            return
        if time.monotonic() > deadline:
            raise SurgeError(
                CouponError.TRY_AGAIN,
                "Try again shortly.",
                status=503,
                headers={"Retry-After": "1"},
            )
        time.sleep(0.02)


def gates_reconcile() -> int:
    """Beat: load any missing gate of a campaign that can still issue. Returns how many."""
    now = timezone.now()
    rebuilt = 0
    for campaign_id in Campaign.objects.exclude(ends_at__lte=now).values_list("id", flat=True):
        if not gate_mod.gate_exists(campaign_id):
            gate_ensure(campaign_id=campaign_id)
            rebuilt += 1
    return rebuilt


# --- Use by orders ------------------------------------------------------------------------


def coupon_use(*, coupon_id: int, user_id: int, used_by: str) -> bool:
    """Marks the user's unused coupon used by `used_by` (e.g. "order:42"). True when it is
    now used by `used_by` (also when it already was: safe to repeat); False otherwise."""
    updated = Coupon.objects.filter(pk=coupon_id, user_id=user_id, used_at__isnull=True).update(
        used_at=timezone.now(), used_by=used_by
    )
    return bool(updated) or Coupon.objects.filter(pk=coupon_id, used_by=used_by).exists()


def coupon_return(*, coupon_id: int, used_by: str) -> bool:
    """Gives the coupon back if `used_by` holds it; safe to repeat."""
    Coupon.objects.filter(pk=coupon_id, used_by=used_by).update(used_at=None, used_by="")
    return True
