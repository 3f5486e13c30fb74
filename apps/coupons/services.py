"""Coupon writes: campaigns, the issue path, persisting coupons, reconciliation, use.

The issue path, and why it is shaped this way:
1. One Redis script (`gate.py`) decides: rate limit, window, once per user, remaining.
2. The acceptance becomes durable in PostgreSQL before the 202: one append-only INSERT of
   a `CouponRequest` row (no shared row is updated, so requests never queue on a lock).
   The INSERT only succeeds while the campaign's `gate_epoch` is the one the script saw:
   after a Redis loss the gate is rebuilt from PostgreSQL under a table lock with a new
   epoch, so an acceptance decided by the lost gate can never be recorded on top of the
   rebuilt one (it is retried against the new gate instead). That is what makes a Redis
   restart unable to over-issue, and every 202 a stored row: no phantom success.
3. Workers turn accepted requests into coupons in batches (`coupons_persist_batch`), one
   drain chain per campaign (`DRAIN`, a `tasks.drain.Drain`, woken by the gate's script);
   the database trigger + check constraint refuse any coupon beyond `total_quantity`.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from apps.notifications import kinds
from apps.notifications.services import Notice, notify_users
from tasks.context import get_request_id
from tasks.drain import Drain

from . import gate as gate_mod
from .errors import CouponError
from .models import Campaign, Coupon, CouponRequest

logger = logging.getLogger(__name__)

ISSUE_ATTEMPTS = 4


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


# --- Issue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    request_id: str


_RECORD_SQL = f"""
INSERT INTO {CouponRequest._meta.db_table}
    (campaign_id, user_id, status, request_id, accepted_at)
SELECT c.id, %s, 'accepted', %s, now()
FROM {Campaign._meta.db_table} c
WHERE c.id = %s AND c.gate_epoch = %s
ON CONFLICT (campaign_id, user_id) DO NOTHING
RETURNING id
"""


def _record(*, campaign_id: int, user_id: int, epoch: str, request_id: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL, [user_id, request_id, campaign_id, epoch])
        return cursor.fetchone() is not None


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


def coupon_request_accept(*, campaign_id: int, user_id: int) -> Accepted:
    """Accepts the user's request durably or raises SurgeError (409/410/403/404/429/503)."""
    request_id = get_request_id() or ""
    took_drain_flag = False
    for _ in range(ISSUE_ATTEMPTS):
        verdict = gate_mod.gate().accept(
            campaign_id=campaign_id,
            user_id=user_id,
            now_ms=int(time.time() * 1000),
            rate_limit=settings.COUPON_ISSUE_RATE_LIMIT,
            rate_window_ms=settings.COUPON_ISSUE_RATE_WINDOW_MS,
            drain_lease_ms=drain_lease_ms(),
        )
        if verdict.kind == "accepted":
            # A later attempt finds the flag this one took standing: remember who starts it.
            took_drain_flag = took_drain_flag or verdict.schedule_drain
            try:
                recorded = _record(
                    campaign_id=campaign_id,
                    user_id=user_id,
                    epoch=verdict.epoch,
                    request_id=request_id,
                )
            except DatabaseError as exc:
                # Not recorded, so not accepted: give the place back and say so.
                gate_mod.gate().release(
                    campaign_id=campaign_id, user_id=user_id, epoch=verdict.epoch
                )
                logger.warning("coupon request not recorded: %s", exc)
                raise SurgeError(
                    CouponError.TRY_AGAIN,
                    "Try again shortly.",
                    status=503,
                    headers={"Retry-After": "1"},
                ) from exc
            if recorded:
                if took_drain_flag:
                    DRAIN.start(campaign_id)  # the script took the chain's flag
                return Accepted(request_id=request_id)
            if CouponRequest.objects.filter(campaign_id=campaign_id, user_id=user_id).exists():
                raise _already()
            continue  # the gate was rebuilt after it decided: ask the new gate
        if verdict.kind == "no_gate":
            if not Campaign.objects.filter(pk=campaign_id).exists():
                raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404)
            gate_ensure(campaign_id=campaign_id)
            continue
        if verdict.kind == "already":
            raise _already()
        if verdict.kind == "sold_out":
            raise SurgeError(
                CouponError.SOLD_OUT, "All coupons of this campaign are gone.", status=410
            )
        if verdict.kind == "not_active":
            raise SurgeError(
                CouponError.CAMPAIGN_NOT_ACTIVE, "The campaign is not running now.", status=403
            )
        if verdict.kind == "rate_limited":
            seconds = max(1, -(-verdict.retry_after_ms // 1000))
            raise SurgeError(
                ErrorCode.THROTTLED,
                f"Too many requests; retry in {seconds} s.",
                status=429,
                headers={"Retry-After": str(seconds)},
            )
    raise SurgeError(
        CouponError.TRY_AGAIN, "Try again shortly.", status=503, headers={"Retry-After": "1"}
    )


def _already() -> SurgeError:
    return SurgeError(
        CouponError.ALREADY_ISSUED, "You already have this campaign's coupon.", status=409
    )


# --- Persist ------------------------------------------------------------------------------


def _new_code() -> str:
    return secrets.token_hex(6).upper()


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
# gen_random_uuid() (a strong random source; 48 random bits as 12 hex digits, like
# _new_code). ON CONFLICT makes a redelivered batch a no-op; the statement-level trigger
# counts the inserted rows and the campaign's check refuses any beyond the total.
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
