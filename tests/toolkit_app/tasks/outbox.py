"""Probe tasks for the outbox, idempotent consumers, the base task and dead letters.

Each records its delivery (committed at once) before doing anything else, so tests can
count deliveries and effects apart: "delivered at least twice, effect exactly once".
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.db.models import F

from tasks.base import SurgeTask
from tasks.consumers import consume_once, current_message_id
from tasks.errors import Permanent, Transient

from ..models.outbox import ProbeDelivery, ProbeEffect, ProbeItem, ProbeSwitch

__all__ = [
    "probe_effect",
    "probe_flaky",
    "probe_kill_self",
    "probe_noop",
    "probe_permanent",
    "probe_sleep",
    "probe_stubborn",
    "probe_touch",
]

logger = logging.getLogger(__name__)


def _delivered(task: Any, token: str) -> None:
    request = task.request
    ProbeDelivery.objects.create(
        token=token,
        task_id=request.id,
        message_id=current_message_id(task),
        redelivered=bool((request.delivery_info or {}).get("redelivered")),
        retries=request.retries or 0,
        pid=os.getpid(),
    )


def _effect_once(task: Any, consumer: str, token: str, hold_s: float = 0.0) -> bool:
    message_id = current_message_id(task)
    with transaction.atomic():
        if not consume_once(consumer=consumer, message_id=message_id):
            logger.info("%s token=%s message=%s: processed already", consumer, token, message_id)
            return False
        if hold_s:
            # Keeps the "processed" row uncommitted a while: a concurrent duplicate waits
            # on the unique index, then sees the conflict.
            time.sleep(hold_s)
        ProbeEffect.objects.create(token=token, message_id=message_id)
    return True


@shared_task(name="toolkit.probe_effect", base=SurgeTask, bind=True)
def probe_effect(self: Any, token: str, sleep_s: float = 0.0, hold_s: float = 0.0) -> None:
    _delivered(self, token)
    if sleep_s:
        time.sleep(sleep_s)
    _effect_once(self, "toolkit.probe_effect", token, hold_s)


@shared_task(
    name="toolkit.probe_flaky",
    base=SurgeTask,
    bind=True,
    max_retries=2,
    retry_backoff_base=0.05,
    retry_backoff_max=0.2,
)
def probe_flaky(self: Any, token: str) -> None:
    """Fails with a transient error while its switch is broken."""
    _delivered(self, token)
    if ProbeSwitch.objects.filter(token=token, broken=True).exists():
        raise Transient(f"switch {token} is broken")
    _effect_once(self, "toolkit.probe_flaky", token)


@shared_task(name="toolkit.probe_permanent", base=SurgeTask, bind=True)
def probe_permanent(self: Any, token: str) -> None:
    _delivered(self, token)
    raise Permanent(f"bad input {token}")


@shared_task(name="toolkit.probe_kill_self", base=SurgeTask, bind=True, max_redeliveries=2)
def probe_kill_self(self: Any, token: str) -> None:
    """Kills the pool process running it, every time (as a segfault or the OOM killer
    would)."""
    _delivered(self, token)
    if not self.request.called_directly:
        os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="toolkit.probe_sleep", base=SurgeTask, bind=True)
def probe_sleep(self: Any, token: str, seconds: float) -> None:
    _delivered(self, token)
    time.sleep(seconds)
    _effect_once(self, "toolkit.probe_sleep", token)


@shared_task(name="toolkit.probe_stubborn", base=SurgeTask, bind=True)
def probe_stubborn(self: Any, token: str, seconds: float) -> None:
    """Ignores its soft time limit: only the hard limit stops it."""
    _delivered(self, token)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            logger.info("probe_stubborn token=%s: soft time limit ignored", token)


@shared_task(name="toolkit.probe_touch", base=SurgeTask)
def probe_touch(item_id: int) -> None:
    """Re-fetches its row; gone means nothing to do (quietly, with a log line)."""
    if not ProbeItem.objects.filter(pk=item_id).update(touched=F("touched") + 1):
        logger.info("probe_touch item_id=%s: gone, nothing to do", item_id)


@shared_task(name="toolkit.probe_noop")
def probe_noop(*args: Any, **kwargs: Any) -> None:
    """Accepts anything, does nothing: a harmless target for publishing tests."""
