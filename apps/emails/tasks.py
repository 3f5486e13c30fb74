"""Thin Celery entry points of the emails app: one drain per priority, and the sweep."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services
from .models import Priority


@shared_task(name="emails.drain_high", base=SurgeTask)
def drain_high() -> None:
    services.emails_drain(priority=Priority.HIGH)


@shared_task(name="emails.drain_normal", base=SurgeTask)
def drain_normal() -> None:
    services.emails_drain(priority=Priority.NORMAL)


@shared_task(name="emails.drain_bulk", base=SurgeTask)
def drain_bulk() -> None:
    services.emails_drain(priority=Priority.BULK)


@shared_task(name="emails.sweep", ignore_result=True)
def sweep() -> None:
    """Beat: wake the drains that have due rows (see services.emails_sweep)."""
    services.emails_sweep()
