"""Thin Celery entry points of the chat app."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services


@shared_task(name="chat.notify_offline", base=SurgeTask)
def notify_offline(room_id: int) -> int:
    """One pass of the room's offline notifications (enqueued with each stored message)."""
    return services.offline_notify(room_id=room_id)
