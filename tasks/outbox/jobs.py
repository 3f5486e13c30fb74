"""The outbox's Celery tasks, run by beat."""

from __future__ import annotations

from celery import shared_task

from .sweeper import outbox_prune, outbox_sweep


@shared_task(name="tasks.outbox_sweep", ignore_result=True)
def sweep() -> int:
    """Beat, every ~2 s. Not a SurgeTask: a failed sweep needs no retry or dead letter,
    the next tick is two seconds away."""
    return outbox_sweep()


@shared_task(name="tasks.outbox_prune", ignore_result=True)
def prune() -> int:
    """Beat, hourly."""
    return outbox_prune()
