"""Thin Celery entry points of the notifications app."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services


@shared_task(name="notifications.broadcast_fanout", base=SurgeTask)
def broadcast_fanout(broadcast_id: int) -> int:
    """One keyset batch of a broadcast's inbox rows; enqueues the next (any delivery)."""
    return services.broadcast_fanout_batch(broadcast_id=broadcast_id)


@shared_task(name="notifications.webpush_deliver", base=SurgeTask)
def webpush_deliver() -> int:
    """One message of the Web Push drain: claim, send and record batches of deliveries."""
    return services.webpush_drain()


@shared_task(name="notifications.webpush_sweep", base=SurgeTask)
def webpush_sweep() -> bool:
    """Beat: restart the Web Push drain when deliveries are due and no chain runs."""
    return services.webpush_drain_sweep()
