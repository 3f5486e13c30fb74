"""The saga engine's Celery tasks."""

from __future__ import annotations

from celery import shared_task

from ..base import SurgeTask
from .definition import STEP_HARD_LIMIT, STEP_SOFT_LIMIT
from .runner import saga_advance
from .services import sagas_wake_due

# --- Tasks -------------------------------------------------------------------------------


@shared_task(
    name="tasks.saga_advance",
    base=SurgeTask,
    soft_time_limit=STEP_SOFT_LIMIT,
    time_limit=STEP_HARD_LIMIT,
)
def advance_saga(saga_id: int) -> None:
    saga_advance(saga_id=saga_id)


@shared_task(name="tasks.saga_wake", base=SurgeTask)
def wake_sagas() -> int:
    return sagas_wake_due()
