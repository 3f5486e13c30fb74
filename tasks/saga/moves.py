"""State changes of a saga shared by the runner and the operators' services: status moves
(`saga_move`, with their trace and the kind's `on_status` hook), compensation start and end,
the lease's end, backoff, and the advance message (`enqueue_advance`). Each changes the saga
in memory (and its step rows, for compensation); the caller holds the saga's row lock and
saves it."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .. import tracing
from ..base import backoff_delay
from ..models.saga import Saga, SagaStatus, SagaStep, StepDirection, StepStatus
from ..outbox import outbox_enqueue
from .definition import (
    SAGA_MACHINE,
    STEP_MACHINE,
    SagaDefinition,
    Step,
    saga_definition_or_none,
)
from .store import flush_moved_rows

# The advance task, by name: this module need not import the task module (which imports
# the runner, which imports this).
ADVANCE_TASK = "tasks.saga_advance"

# One logger for the whole engine: operators grep for "tasks.saga".
logger = logging.getLogger("tasks.saga")


def begin_compensation(saga: Saga, definition: SagaDefinition) -> None:
    """Stops forward progress and writes one pending compensation row per succeeded step
    that has a compensation, newest first; with none to run the saga finishes now."""
    flush_moved_rows(saga)  # the queries below must see the rows as moved so far
    saga_move(saga, SagaStatus.COMPENSATING)
    now = timezone.now()
    forward = saga.steps.filter(direction=StepDirection.FORWARD)
    STEP_MACHINE.update(
        forward, current=StepStatus.PENDING, target=StepStatus.SKIPPED, strict=False, at=now
    )
    STEP_MACHINE.update(
        forward,
        current=[StepStatus.RUNNING, StepStatus.RETRYING],
        target=StepStatus.FAILED,
        strict=False,
        error="abandoned: the saga was cancelled",
        finished_at=now,
        at=now,
    )
    succeeded = forward.filter(status=StepStatus.SUCCEEDED).order_by("-index")
    rows = []
    for done in succeeded:
        step = definition.step_at(done.index, done.name, done.direction)
        if step is not None and step.compensate is not None:
            rows.append(
                SagaStep(
                    saga=saga,
                    index=done.index,
                    name=step.compensate_name,
                    direction=StepDirection.COMPENSATION,
                )
            )
    SagaStep.objects.bulk_create(rows)
    if not rows:
        finish_compensation(saga)


def finish_compensation(saga: Saga) -> None:
    """Every compensation ran: the saga ends `cancelled` (if asked to) or `failed`."""
    target = SagaStatus.CANCELLED if saga.cancel_requested else SagaStatus.FAILED
    saga_move(saga, target)
    saga.finished_at, saga.wake_at, saga.needs_attention = timezone.now(), None, False


def flag_needs_attention(saga: Saga, error: str) -> None:
    """Parks the saga for an operator (no wake), with an ERROR log line."""
    saga.needs_attention, saga.error, saga.wake_at = True, error, None
    logger.error("saga %s #%s needs attention: %s", saga.kind, saga.pk, error)


def end_lease(saga: Saga) -> None:
    saga.lease_token, saga.lease_until = "", None


def release_lease(saga: Saga, *, wake_in: float | None) -> None:
    """Ends the lease; the sweeper wakes the saga in `wake_in` seconds (None: never)."""
    saga.lease_token, saga.lease_until = "", None
    saga.wake_at = None if wake_in is None else timezone.now() + timedelta(seconds=wake_in)


def saga_move(saga: Saga, target: str) -> None:
    """The one way a saga's status changes: checked against SAGA_MACHINE, traced, and told
    to the kind's `on_status` hook in the same transaction."""
    current = saga.status
    SAGA_MACHINE.check(current, target)
    saga.status = target
    trace_status(saga, current, target)
    definition = saga_definition_or_none(saga.kind)
    if definition is not None and definition.on_status is not None:
        definition.on_status(saga, target)


def trace_status(saga: Saga, current: str, target: str) -> None:
    tracing.record(
        "saga.status",
        saga.kind,
        request_id=saga.request_id or None,
        detail={"saga_id": saga.pk, "ref": saga.ref, "from": current, "to": target},
    )


def trace_step(saga: Saga, row: SagaStep, **extra: Any) -> None:
    tracing.record(
        "saga.step",
        f"{saga.kind}.{row.name}",
        request_id=saga.request_id or None,
        detail={
            "saga_id": saga.pk,
            "direction": row.direction,
            "index": row.index,
            "status": row.status,
            "attempt": row.attempts,
            **extra,
        },
    )


def step_backoff(step: Step, attempt: int) -> float:
    """Exponential with full jitter: uniform(0, min(cap, base * 2**(attempt - 1)))."""
    base = step.backoff_base
    cap = step.backoff_max
    return backoff_delay(
        attempt - 1,
        base=float(settings.SAGA_BACKOFF_BASE) if base is None else base,
        cap=float(settings.SAGA_BACKOFF_MAX) if cap is None else cap,
    )


def recover_after() -> float:
    """How long a queued advance may wait before the sweeper sends another."""
    return float(settings.SAGA_RECOVER_AFTER)


def enqueue_advance(saga_id: int, *, not_before: float | None = None) -> None:
    """Has the saga advanced after the caller's transaction commits (the outbox). With
    `not_before` (a Unix time), the turn waits until then (see tasks/saga/jobs.py)."""
    if not_before is None:
        outbox_enqueue(ADVANCE_TASK, args=[saga_id])
    else:
        outbox_enqueue(ADVANCE_TASK, args=[saga_id], kwargs={"not_before": not_before})
