"""Services and selectors: start, cancel, resume, run now, the wake sweep, reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from ..context import get_request_id
from ..errors import IllegalTransition
from ..models.saga import RUNNABLE, Saga, SagaStatus, SagaStep, StepDirection, StepStatus
from .definition import STEP_MACHINE, NotCancellable, saga_definition
from .moves import begin_compensation, enqueue_advance, recover_after, saga_move, trace_status
from .store import forward_steps_insert, saga_insert

# One logger for the whole engine: operators grep for "tasks.saga".
logger = logging.getLogger("tasks.saga")


# --- Services ----------------------------------------------------------------------------


def saga_start(
    *, kind: str, ref: str = "", context: Mapping[str, Any] | None = None, publish: bool = True
) -> Saga:
    """Writes a pending saga and its forward step rows in the caller's transaction and has it
    run after commit. One saga per (kind, ref): starting it again returns the first one.

    `publish=False` leaves the first turn to the `tasks.saga_wake` sweeper (nothing touches the
    broker; the tests use it to stand for a lost message).
    """
    definition = saga_definition(kind)
    now = timezone.now()
    # No savepoint of its own: an error here is the caller's transaction's error.
    with transaction.atomic(savepoint=False):
        saga = Saga(
            kind=kind,
            ref=ref,
            context=dict(context or {}),
            request_id=get_request_id() or "",
            wake_at=now + timedelta(seconds=recover_after() if publish else 0),
            created_at=now,
            updated_at=now,
        )
        inserted = saga_insert(saga)
        if inserted is None:  # the ref is taken: that saga is the one
            return Saga.objects.get(kind=kind, ref=ref)
        saga.pk = inserted
        saga._state.adding, saga._state.db = False, connection.alias
        rows = []
        for index, step in enumerate(definition.steps):
            skipped = step.skip_if is not None and step.skip_if(saga.context)
            status = StepStatus.SKIPPED if skipped else StepStatus.PENDING
            rows.append((index, step.name, str(status)))
        forward_steps_insert(saga.pk, rows, now)
        trace_status(saga, "", SagaStatus.PENDING)
        if publish:
            enqueue_advance(saga.pk)
    return saga


def saga_cancel(*, saga_id: int, reason: str = "cancelled") -> Saga:
    """Stops forward progress and compensates the steps that succeeded; the saga ends
    `cancelled`. Refused (NotCancellable, an IllegalTransition) once a point-of-no-return step
    has started or the saga has finished otherwise; cancelling twice changes nothing.

    Safe against a runner mid-step: under the saga's row lock, a held lease only records
    `cancel_requested` and the runner compensates as soon as its current step ends (it reads
    the flag under the same lock before starting another); a free lease lets the cancel move
    the saga to `compensating` itself.
    """
    with transaction.atomic():
        saga = Saga.objects.select_for_update().get(pk=saga_id)
        if saga.status == SagaStatus.CANCELLED or (
            saga.cancel_requested and saga.status in RUNNABLE
        ):
            return saga
        if saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            raise NotCancellable(saga.status)
        definition = saga_definition(saga.kind)
        started = saga.steps.filter(direction=StepDirection.FORWARD).exclude(
            status__in=[StepStatus.PENDING, StepStatus.SKIPPED]
        )
        for row in started:
            step = definition.step_at(row.index, row.name, row.direction)
            if step is not None and step.point_of_no_return:
                raise NotCancellable(saga.status, step.name)
        saga.cancel_requested = True
        saga.failure_reason = reason[:200]
        if not Saga.objects.filter(pk=saga.pk, lease_until__gt=Now()).exists():
            begin_compensation(saga, definition)
            # A runner past its expired lease must not record anything after this.
            saga.lease_token, saga.lease_until = "", None
            if saga.status in RUNNABLE:
                saga.wake_at = timezone.now() + timedelta(seconds=recover_after())
                enqueue_advance(saga.pk)
        saga.save()
    logger.info("saga %s #%s cancel requested: %s", saga.kind, saga.pk, reason)
    return saga


def saga_resume_compensation(*, saga_id: int) -> Saga:
    """An operator's retry of a parked saga: the failed compensation gets a fresh round of
    attempts and the compensations continue from there (those that succeeded do not run
    again). Only a `compensation_failed` saga can be resumed (else IllegalTransition)."""
    with transaction.atomic():
        saga = Saga.objects.select_for_update().get(pk=saga_id)
        if saga.status != SagaStatus.COMPENSATION_FAILED:
            # running -> compensating is a legal move, but not one an operator may force.
            raise IllegalTransition("saga resume", saga.status, SagaStatus.COMPENSATING)
        saga_move(saga, SagaStatus.COMPENSATING)
        STEP_MACHINE.update(
            saga.steps.filter(direction=StepDirection.COMPENSATION),
            current=StepStatus.FAILED,
            target=StepStatus.PENDING,
            strict=False,
            attempts=0,
            finished_at=None,
            at=timezone.now(),
        )
        saga.needs_attention = False
        saga.error = ""
        saga.wake_at = timezone.now() + timedelta(seconds=recover_after())
        saga.save()
        enqueue_advance(saga.pk)
    logger.info("saga %s #%s compensation resumed", saga.kind, saga.pk)
    return saga


def saga_run_now(*, saga_id: int) -> bool:
    """Asks for a turn now (the admin's "Run now"): clears `needs_attention` of a runnable
    saga and enqueues an advance. Harmless on a saga that is running: the lease decides."""
    with transaction.atomic():
        moved = Saga.objects.filter(pk=saga_id, status__in=RUNNABLE).update(
            needs_attention=False,
            wake_at=Now() + timedelta(seconds=recover_after()),
        )
        if moved:
            enqueue_advance(saga_id)
    return bool(moved)


def sagas_wake_due(*, limit: int | None = None) -> int:
    """Re-enqueues runnable sagas whose `wake_at` has passed and whose lease is free: retries
    that are due, advance messages that were lost, runners that died mid-step. Pushes each
    one's `wake_at` forward so a queued advance is not sent again at every sweep. SKIP LOCKED:
    several beat hosts never pick the same saga. Returns how many were enqueued."""
    limit = limit or int(settings.SAGA_WAKE_BATCH)
    with transaction.atomic():
        due = list(
            Saga.objects.select_for_update(skip_locked=True)
            .filter(status__in=RUNNABLE, needs_attention=False)
            .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=Now()))
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=Now()))
            .order_by("wake_at")
            .values_list("pk", flat=True)[:limit]
        )
        if due:
            Saga.objects.filter(pk__in=due).update(
                wake_at=Now() + timedelta(seconds=recover_after())
            )
            for saga_id in due:
                enqueue_advance(saga_id)
    if due:
        logger.info("saga sweep: woke %d saga(s)", len(due))
    return len(due)


# --- Selectors ---------------------------------------------------------------------------


def saga_get(*, saga_id: int) -> Saga | None:
    return Saga.objects.filter(pk=saga_id).first()


def saga_get_by_ref(*, kind: str, ref: str) -> Saga | None:
    return Saga.objects.filter(kind=kind, ref=ref).first()


def saga_step_list(*, saga_id: int) -> list[SagaStep]:
    """The saga's timeline: forward steps in order, then compensations as they ran."""
    return list(SagaStep.objects.filter(saga_id=saga_id).order_by("id"))
