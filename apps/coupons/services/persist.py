"""Persisting accepted requests as coupons: one drain chain per campaign (`DRAIN`)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from apps.notifications import kinds
from apps.notifications.services import Notice, notify_users
from tasks.drain import Drain

from .. import gate as gate_mod
from ..models import Campaign, Coupon, CouponRequest

logger = logging.getLogger(__name__)


def drain_lease_ms() -> int:
    """How long a drain chain's flag lasts without renewal: many of its passes."""
    return max(10_000, 10 * int(settings.COUPON_DRAIN_EVERY_MS))


def _drain_interval_s() -> float:
    return int(settings.COUPON_DRAIN_EVERY_MS) / 1000


PERSIST_TASK = "coupons.persist"
PERSIST_BATCH_SIZE = 2000

# One chain of `coupons.persist` messages per campaign, a pass per message: at once after
# a full batch, else COUPON_DRAIN_EVERY_MS after the previous pass began, so a busy sale
# pays one pass a second, not one per request, and the last request of a sale becomes a
# coupon about one interval after it, with no beat involved. The gate's script takes the
# wake before the request's INSERT commits, hence `wakes_before_commit`.
DRAIN = Drain(
    gate_mod.DRAIN_NAME,
    task=PERSIST_TASK,
    lease_ms=drain_lease_ms,
    pass_interval_s=_drain_interval_s,
    batch_size=PERSIST_BATCH_SIZE,
    wakes_before_commit=True,
)


# --- Persist ------------------------------------------------------------------------------


def coupons_persist_batch(*, campaign_id: int, batch_size: int = 2000) -> int:
    """Turns up to `batch_size` accepted requests into coupons, in one transaction.

    Rows are claimed with SKIP LOCKED, so several workers drain one campaign together
    without waiting on each other or issuing twice; ON CONFLICT (campaign, user) makes a
    redelivered batch a no-op. Returns how many requests were turned into coupons.
    """
    for _ in range(3):
        try:
            return _persist_batch(campaign_id=campaign_id, batch_size=batch_size)
        except IntegrityError as exc:
            if "code" not in str(exc):
                # The bound (issued_count <= total_quantity) or another invariant refused
                # the batch: never paper over that.
                logger.error("coupon batch refused by the database: %s", exc)
                raise
            logger.info("coupon code collision; new codes for the batch")
    raise RuntimeError("three coupon code collisions in a row")


# One statement per batch: claim accepted requests (SKIP LOCKED: drains of one campaign
# never wait on each other), insert their coupons, mark them issued. Building 2,000 codes
# and 10,000 parameters in Python cost a third of a pass; the codes come from PostgreSQL's
# gen_random_uuid() (a strong random source: 48 random bits as 12 hex digits). ON
# CONFLICT makes a redelivered batch a no-op; the statement-level trigger counts the
# inserted rows and the campaign's check refuses any beyond the total.
_PERSIST_SQL = f"""
WITH picked AS (
    SELECT id, user_id FROM {CouponRequest._meta.db_table}
    WHERE campaign_id = %(campaign)s AND status = 'accepted'
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), made AS (
    INSERT INTO {Coupon._meta.db_table}
        (campaign_id, user_id, code, discount_percent, issued_at, used_at, used_by)
    SELECT %(campaign)s, picked.user_id,
        upper(substr(replace(gen_random_uuid()::text, '-', ''), 1, 12)),
        (SELECT discount_percent FROM {Campaign._meta.db_table} WHERE id = %(campaign)s),
        now(), NULL, ''
    FROM picked
    ON CONFLICT (campaign_id, user_id) DO NOTHING
    RETURNING id, user_id, code, discount_percent
), marked AS (
    UPDATE {CouponRequest._meta.db_table} AS r SET status = 'issued', issued_at = now()
    FROM picked WHERE r.id = picked.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked), made.id, made.user_id, made.code, made.discount_percent
FROM (SELECT 1) AS one LEFT JOIN made ON true
"""


def _persist_batch(*, campaign_id: int, batch_size: int) -> int:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_PERSIST_SQL, {"campaign": campaign_id, "limit": batch_size})
            rows = cursor.fetchall()
        # The owners hear of their coupons in the batch's transaction (one more statement
        # per batch, not one per coupon); "coupon:<id>" makes a repeat notify nobody twice.
        notify_users(
            kind=kinds.COUPON_ISSUED,
            notices=[
                Notice(
                    user_id=user_id,
                    title=f"Your coupon {code}",
                    body=f"{discount}% off your next order.",
                    url="/coupons/",
                    source_key=f"coupon:{coupon_id}",
                )
                for _, coupon_id, user_id, code, discount in rows
                if coupon_id is not None
            ],
        )
        return int(rows[0][0])


def coupons_pending_campaigns() -> list[int]:
    return list(
        CouponRequest.objects.filter(status=CouponRequest.Status.ACCEPTED)
        .values_list("campaign_id", flat=True)
        .distinct()
    )


def coupons_drain(*, campaign_id: int) -> int:
    """One message of the campaign's drain chain (`DRAIN.run`): persists a batch and sends
    the next message while there is work; returns how many requests became coupons."""
    return DRAIN.run(
        campaign_id,
        work=lambda: coupons_persist_batch(campaign_id=campaign_id, batch_size=PERSIST_BATCH_SIZE),
    )


def coupons_drain_sweep() -> int:
    """Beat: restart the chain of every campaign with accepted requests and none running
    (its message was lost, or its worker died and the flag's lease lapsed). Returns how
    many it started."""
    return DRAIN.sweep(coupons_pending_campaigns())
