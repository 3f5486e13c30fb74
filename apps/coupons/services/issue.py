"""The issue path: the gate decides, one INSERT remembers, the drain is woken."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection

from apps.core.errors import ErrorCode, SurgeError
from tasks.context import get_request_id

from .. import gate as gate_mod
from ..errors import CouponError
from ..models import Campaign, CouponRequest
from .campaigns import gate_ensure
from .persist import DRAIN, drain_lease_ms

logger = logging.getLogger(__name__)

ISSUE_ATTEMPTS = 4


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
