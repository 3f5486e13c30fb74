"""Thin Celery entry points of the notifications app."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services


@shared_task(name="notifications.broadcast_fanout", base=SurgeTask)
def broadcast_fanout(broadcast_id: int) -> int:
    """One keyset batch of a broadcast's inbox rows; enqueues the next (any delivery)."""
    return services.broadcast_fanout_batch(broadcast_id=broadcast_id)
