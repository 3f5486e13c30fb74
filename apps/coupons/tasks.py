"""Thin Celery entry points of the coupons app.

A campaign's accepted requests are drained by one chain of `persist` messages at a time
(`services.DRAIN`, see `tasks.drain`): the acceptance that finds no chain starts one, each
message persists a batch and sends the next while it finds work. Beat's `sweep` is left
with what a dead worker or a lost message strands.
"""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services


@shared_task(name="coupons.persist", base=SurgeTask)
def persist(campaign_id: int) -> int:
    """One pass of the campaign's drain chain."""
    return services.coupons_drain(campaign_id=campaign_id)


@shared_task(name="coupons.sweep", base=SurgeTask)
def sweep() -> None:
    """Beat: restart the drain of campaigns with accepted requests and no running chain."""
    services.coupons_drain_sweep()


@shared_task(name="coupons.reconcile", base=SurgeTask)
def reconcile() -> int:
    """Beat: reload the gates Redis lost (a restart), from PostgreSQL."""
    return services.gates_reconcile()
