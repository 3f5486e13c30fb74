"""The saga engine's Celery tasks."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from ..base import SurgeTask
from .definition import STEP_HARD_LIMIT, STEP_SOFT_LIMIT
from .moves import ADVANCE_TASK
from .runner import saga_advance
from .services import sagas_wake_due

# --- Tasks -------------------------------------------------------------------------------


@shared_task(
    name=ADVANCE_TASK,
    base=SurgeTask,
    bind=True,
    soft_time_limit=STEP_SOFT_LIMIT,
    time_limit=STEP_HARD_LIMIT,
)
def advance_saga(self: Any, saga_id: int, not_before: float | None = None) -> None:
    # A step's short retry is enqueued through the outbox, which publishes at once: the
    # message waits out the rest of its backoff here as Celery's own retry (an ETA message
    # the worker holds, not a thread asleep). Its saga's wake_at is the net should it be lost.
    wait = 0.0 if not_before is None else not_before - time.time()
    if wait > 0:
        raise self.retry(countdown=wait, max_retries=None)
    saga_advance(saga_id=saga_id)


@shared_task(name="tasks.saga_wake", base=SurgeTask)
def wake_sagas() -> int:
    return sagas_wake_due()
