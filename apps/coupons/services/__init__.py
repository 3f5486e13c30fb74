"""Coupon writes: campaigns and the gate (`campaigns`), the issue path (`issue`), persisting
coupons (`persist`); every public name is re-exported here.

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

from .campaigns import (
    campaign_create,
    campaign_delete,
    campaign_update,
    coupon_return,
    coupon_use,
    gate_ensure,
    gate_rebuild,
    gates_reconcile,
)
from .issue import Accepted, coupon_request_accept
from .persist import (
    DRAIN,
    PERSIST_BATCH_SIZE,
    PERSIST_TASK,
    coupons_drain,
    coupons_drain_sweep,
    coupons_pending_campaigns,
    coupons_persist_batch,
    drain_lease_ms,
)

__all__ = [
    "DRAIN",
    "PERSIST_BATCH_SIZE",
    "PERSIST_TASK",
    "Accepted",
    "campaign_create",
    "campaign_delete",
    "campaign_update",
    "coupon_request_accept",
    "coupon_return",
    "coupon_use",
    "coupons_drain",
    "coupons_drain_sweep",
    "coupons_pending_campaigns",
    "coupons_persist_batch",
    "drain_lease_ms",
    "gate_ensure",
    "gate_rebuild",
    "gates_reconcile",
]
