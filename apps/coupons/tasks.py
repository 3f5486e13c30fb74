"""Thin Celery entry points of the coupons app.

Draining a campaign is one chain of `persist` runs at a time, marked by the drain flag in
Redis (gate.drain_flag_key). The acceptance that finds no flag sets it and sends the first
run; each run persists a batch and, while it finds work, sends the next one (at once for a
full batch, else after COUPON_DRAIN_EVERY_MS, so a busy sale pays one run a second, not one
per request). A run that finds nothing ends the chain: it deletes the flag and looks once
more, for a request accepted while the flag still stood that committed after its look;
what it finds there restarts the chain. The last accepted request of a sale therefore
becomes a coupon about one interval after it, with no beat involved; beat's sweep is left
with what a dead worker or a lost message strands.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from tasks.base import SurgeTask

from . import gate, services

BATCH_SIZE = 2000


def _interval_s() -> float:
    return int(settings.COUPON_DRAIN_EVERY_MS) / 1000


@shared_task(name="coupons.persist", base=SurgeTask)
def persist(campaign_id: int, tail: bool = False) -> int:
    """One pass of the campaign's drain chain (`tail` is accepted for messages queued by an
    older release and ignored)."""
    lease_ms = services.drain_lease_ms()
    done = services.coupons_persist_batch(campaign_id=campaign_id, batch_size=BATCH_SIZE)
    if done:
        gate.drain_flag_renew(campaign_id, lease_ms)
        countdown = 0.0 if done >= BATCH_SIZE else _interval_s()
        persist.apply_async((campaign_id,), countdown=countdown)
        return done
    gate.drain_flag_release(campaign_id)
    late = services.coupons_persist_batch(campaign_id=campaign_id, batch_size=BATCH_SIZE)
    if late and gate.drain_flag_take(campaign_id, lease_ms):
        persist.apply_async((campaign_id,), countdown=_interval_s())
    return late


@shared_task(name="coupons.sweep", base=SurgeTask)
def sweep() -> None:
    """Beat: restart the drain of campaigns with accepted requests and no running chain
    (its message was lost, or its worker died and its flag's lease ran out)."""
    lease_ms = services.drain_lease_ms()
    for campaign_id in services.coupons_pending_campaigns():
        if gate.drain_flag_take(campaign_id, lease_ms):
            persist.delay(campaign_id)


@shared_task(name="coupons.reconcile", base=SurgeTask)
def reconcile() -> int:
    """Beat: reload the gates Redis lost (a restart), from PostgreSQL."""
    return services.gates_reconcile()
