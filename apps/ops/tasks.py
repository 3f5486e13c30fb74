"""Thin Celery entry points of the ops app."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="ops.pong")
def pong(ping_id: int) -> None:
    services.ping_answer(ping_id=ping_id)
