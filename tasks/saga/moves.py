"""State changes of a saga shared by the runner and the operators' services: status moves
(with their trace and the kind's `on_status` hook), compensation start and end, leases,
backoff, and the advance message."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone

from .. import tracing
from ..base import backoff_delay
from ..models.saga import Saga, SagaStatus, SagaStep, StepDirection, StepStatus
from ..outbox import outbox_enqueue
from .definition import _REGISTRY, SAGA_MACHINE, STEP_MACHINE, SagaDefinition, Step, _knob
from .store import _flush_moved_rows

# One logger for the whole engine: operators grep for "tasks.saga".
logger = logging.getLogger("tasks.saga")


def _begin_compensation(saga: Saga, definition: SagaDefinition) -> None:
    """Stops forward progress and writes one pending compensation row per succeeded step
    that has a compensation, newest first; with none to run the saga finishes now."""
    _flush_moved_rows(saga)  # the queries below must see the rows as moved so far
    _saga_move(saga, SagaStatus.COMPENSATING)
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
        _finish_compensation(saga)


def _finish_compensation(saga: Saga) -> None:
    target = SagaStatus.CANCELLED if saga.cancel_requested else SagaStatus.FAILED
    _saga_move(saga, target)
    saga.finished_at, saga.wake_at, saga.needs_attention = timezone.now(), None, False


def _needs_attention(saga: Saga, error: str) -> None:
    saga.needs_attention, saga.error, saga.wake_at = True, error, None
    logger.error("saga %s #%s needs attention: %s", saga.kind, saga.pk, error)


def _end_lease(saga: Saga) -> None:
    saga.lease_token, saga.lease_until = "", None


def _release(saga: Saga, *, wake_in: float | None) -> None:
    saga.lease_token, saga.lease_until = "", None
    saga.wake_at = None if wake_in is None else timezone.now() + timedelta(seconds=wake_in)


def _saga_move(saga: Saga, target: str) -> None:
    current = saga.status
    SAGA_MACHINE.check(current, target)
    saga.status = target
    _trace_status(saga, current, target)
    definition = _REGISTRY.get(saga.kind)
    if definition is not None and definition.on_status is not None:
        definition.on_status(saga, target)


def _trace_status(saga: Saga, current: str, target: str) -> None:
    tracing.record(
        "saga.status",
        saga.kind,
        request_id=saga.request_id or None,
        detail={"saga_id": saga.pk, "ref": saga.ref, "from": current, "to": target},
    )


def _trace_step(saga: Saga, row: SagaStep, **extra: Any) -> None:
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


def _backoff(step: Step, attempt: int) -> float:
    """Exponential with full jitter: uniform(0, min(cap, base * 2**(attempt - 1)))."""
    base = step.backoff_base if step.backoff_base is not None else _knob("SAGA_BACKOFF_BASE", 1.0)
    cap = step.backoff_max if step.backoff_max is not None else _knob("SAGA_BACKOFF_MAX", 60.0)
    return backoff_delay(attempt - 1, base=base, cap=cap)


def _recover_after() -> float:
    return _knob("SAGA_RECOVER_AFTER", 60.0)


def _enqueue_advance(saga_id: int) -> None:
    outbox_enqueue("tasks.saga_advance", args=[saga_id])
