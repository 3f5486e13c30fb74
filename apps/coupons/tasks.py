"""Thin Celery entry points of the coupons app."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services

# A request accepted while a drain message was already on its way publishes none of its
# own; if its row commits just after that drain's last look, one late look catches it.
# Anything later still is the beat sweep's (every few seconds).
TAIL_CHECK_S = 0.3


BATCH_SIZE = 2000


@shared_task(name="coupons.persist", base=SurgeTask)
def persist(campaign_id: int, tail: bool = False) -> int:
    """Drain one batch. A full batch means a backlog: continue at once. Otherwise stop:
    while requests keep coming, their own drain messages (at most one per
    COUPON_DRAIN_EVERY_MS) start the next run, so runs never pile up on each other."""
    done = services.coupons_persist_batch(campaign_id=campaign_id, batch_size=BATCH_SIZE)
    if done >= BATCH_SIZE:
        persist.delay(campaign_id)
    elif not tail:
        persist.apply_async((campaign_id, True), countdown=TAIL_CHECK_S)
    return done


@shared_task(name="coupons.sweep", base=SurgeTask)
def sweep() -> None:
    """Beat: drain campaigns with accepted requests whose drain message was lost."""
    for campaign_id in services.coupons_pending_campaigns():
        persist.delay(campaign_id)


@shared_task(name="coupons.reconcile", base=SurgeTask)
def reconcile() -> int:
    """Beat: reload gates Redis lost (restart), from PostgreSQL."""
    return services.gates_reconcile()
