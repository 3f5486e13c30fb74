"""The runner: one turn of a saga under its lease, step after step (see the package
docstring for the invariants)."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from ..base import is_transient
from ..context import get_request_id, reset_request_id, set_request_id
from ..models.saga import Saga, SagaStatus, SagaStep, StepDirection, StepStatus
from .definition import (
    LEASE_SECONDS,
    SagaDefinition,
    Step,
    StepContext,
    StepFn,
    saga_definition,
    saga_definition_or_none,
)
from .moves import (
    begin_compensation,
    end_lease,
    enqueue_advance,
    finish_compensation,
    flag_needs_attention,
    recover_after,
    release_lease,
    saga_move,
    step_backoff,
    trace_step,
)
from .store import (
    flush_moved_rows,
    forward_rows,
    saga_locked,
    saga_save,
    saga_take_lease,
    step_move,
)

# One logger for the whole engine: operators grep for "tasks.saga".
logger = logging.getLogger("tasks.saga")


def saga_advance(*, saga_id: int, budget: float | None = None) -> bool:
    """Runs one turn of the saga: its steps (or compensations) one after the other, while
    they succeed and `budget` seconds (default SAGA_TURN_BUDGET) have not passed since the
    turn began. A step is only started within the budget, but the first step of a turn always
    runs: a budget of 0 runs exactly one step per turn.

    Invariant: at most one runner per saga. The lease is taken by a conditional UPDATE; a
    caller that finds it held (or the saga finished) returns False and changes nothing.
    """
    if budget is None:
        budget = float(settings.SAGA_TURN_BUDGET)
    turn = _Turn(saga_id, uuid.uuid4().hex, time.monotonic() + budget)
    # The saga's request id follows its work, even when the sweeper sent the message.
    request_token = set_request_id(get_request_id())
    try:
        work = _begin_turn(turn)
        if not turn.taken:
            return False
        while work is not None:
            work = _run(turn, work)
    finally:
        if turn.holding:  # an error left the lease taken: free it rather than let it expire
            Saga.objects.filter(pk=saga_id, lease_token=turn.token).update(
                lease_token="", lease_until=None
            )
        reset_request_id(request_token)
    return True


# --- Engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Work:
    saga_id: int
    row: SagaStep
    step: Step
    direction: str
    fn: StepFn
    ctx: StepContext
    # A remote step's local part, run in the recording transaction (None: nothing to run).
    record: StepFn | None = None


class _Turn:
    """One runner's turn: its lease token, when it stops starting steps, and the saga's
    forward step rows as this runner last wrote them (the lease makes it their only writer,
    so they are read once per turn; None when they must be read again)."""

    __slots__ = ("deadline", "holding", "rows", "saga_id", "taken", "token")

    def __init__(self, saga_id: int, token: str, deadline: float) -> None:
        self.saga_id = saga_id
        self.token = token
        self.deadline = deadline
        self.taken = False  # the lease was ours at some point of the turn
        self.holding = False  # the database may still show the lease as ours
        self.rows: list[SagaStep] | None = None


_FORWARD_DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


class _LeaseLost(Exception):
    pass


def _begin_turn(turn: _Turn) -> _Work | None:
    """Takes the lease and starts the first step, in one transaction: a second runner's
    conditional UPDATE waits for this row lock and then finds the lease taken."""
    with transaction.atomic():
        saga = saga_take_lease(turn.saga_id, turn.token, LEASE_SECONDS)
        if saga is None:
            return None
        set_request_id(saga.request_id or get_request_id())
        planned = _plan(saga, turn)
        work = None if planned is None else _start_attempt(saga, *planned)
        if work is None:
            end_lease(saga)  # nothing to run: the lease ends with this state change
        saga_save(saga)
    turn.taken = True
    turn.holding = work is not None
    return work


def _plan(saga: Saga, turn: _Turn) -> tuple[SagaStep, Step] | None:
    """State-only moves until a function must be called: returns the row to run next and
    its step (not started yet), or None when there is nothing to run. Runs under the lease
    and the saga's row lock; the caller saves."""
    definition = saga_definition_or_none(saga.kind)
    if definition is None:
        flag_needs_attention(saga, f"saga kind {saga.kind!r} is not defined in this process")
        return None
    while True:
        if saga.status == SagaStatus.PENDING:
            if saga.cancel_requested:
                begin_compensation(saga, definition)
            else:
                saga_move(saga, SagaStatus.RUNNING)
            continue
        if saga.status == SagaStatus.RUNNING:
            if saga.cancel_requested:
                begin_compensation(saga, definition)
                continue
            direction = StepDirection.FORWARD
            if turn.rows is None:
                turn.rows = forward_rows(saga.pk)
            row = next((r for r in turn.rows if r.status not in _FORWARD_DONE), None)
            if row is None:
                saga_move(saga, SagaStatus.COMPLETED)
                saga.finished_at, saga.wake_at = timezone.now(), None
                return None
        elif saga.status == SagaStatus.COMPENSATING:
            turn.rows = None  # begin_compensation changed forward rows in bulk
            direction = StepDirection.COMPENSATION
            flush_moved_rows(saga)
            row = (
                saga.steps.select_for_update()
                .filter(direction=direction)
                .exclude(status=StepStatus.SUCCEEDED)
                .order_by("id")
                .first()
            )
            if row is None:
                finish_compensation(saga)
                return None
        else:
            return None  # finished or parked: nothing to run
        step = definition.step_at(row.index, row.name, row.direction)
        if step is None:
            flag_needs_attention(saga, f"step {row.index} {row.name!r} is no longer defined")
            return None
        if row.status == StepStatus.RUNNING and row.attempts >= step.attempts_allowed(direction):
            # Its last allowed attempt was running when the runner was lost.
            error = f"runner lost during attempt {row.attempts}"
            if _fail_row(saga, row, definition, f"{row.name}_retries_exhausted", error):
                continue
            return None
        return row, step


def _start_attempt(saga: Saga, row: SagaStep, step: Step) -> _Work:
    step_move(
        saga,
        row,
        StepStatus.RUNNING,
        attempts=row.attempts + 1,
        started_at=row.started_at or timezone.now(),
    )
    saga.current_step = row.index
    trace_step(saga, row)
    forward = row.direction == StepDirection.FORWARD
    fn = step.forward if forward else step.compensate
    assert fn is not None  # compensation rows exist only for steps with a compensation
    ctx = StepContext(
        saga_id=saga.pk,
        kind=saga.kind,
        ref=saga.ref,
        step=row.name,
        direction=row.direction,
        attempt=row.attempts,
        context=dict(saga.context),
        failure_reason=saga.failure_reason,
        request_id=saga.request_id,
    )
    record = (step.record if forward else step.compensate_record) if step.remote else None
    return _Work(saga.pk, row, step, row.direction, fn, ctx, record)


def _continue(saga: Saga, turn: _Turn) -> _Work | None:
    """After a step's outcome, in the transaction that records it: starts the next step
    while the turn's budget lasts; else hands the saga to a new turn (a fresh message).
    A saga with nothing left to run finishes here either way. Saves the saga."""
    planned = _plan(saga, turn)
    work = None
    if planned is None:
        end_lease(saga)
    elif time.monotonic() < turn.deadline:
        work = _start_attempt(saga, *planned)
    else:
        release_lease(saga, wake_in=recover_after())
        enqueue_advance(saga.pk)
    saga_save(saga)
    return work


def _run(turn: _Turn, work: _Work) -> _Work | None:
    """Calls the step's function (a local one inside the transaction that records its
    outcome, a remote one before it, outside any transaction), then records the outcome —
    only while still holding the lease. Returns the next step to run in this turn, if any
    (already committed as running)."""
    if work.step.remote and connection.in_atomic_block:
        # Not the step's failure but the caller's: the attempt stays `running` (counted)
        # and the lease is freed, so a runner outside any transaction takes it from here.
        raise TransactionManagementError(
            f"saga #{work.saga_id}: remote step {work.ctx.step} would run inside a "
            "transaction; call saga_advance outside transaction.atomic()"
        )
    try:
        result = _call(work.fn, work.ctx) if work.step.remote else None
        with transaction.atomic():
            if not work.step.remote:
                result = _call(work.fn, work.ctx)
            elif work.record is not None:
                told = dataclasses.replace(work.ctx, context={**work.ctx.context, **(result or {})})
                result = {**(result or {}), **(_call(work.record, told) or {})}
            saga = saga_locked(work.saga_id, turn.token)
            if saga is None:
                raise _LeaseLost
            # The row as this runner committed it: with the lease still ours (checked
            # under the saga's row lock just now) nobody else has written it since.
            after = _record_success(saga, work.row, result, turn)
        turn.holding = after is not None
        return after
    except _LeaseLost:
        turn.holding = False
        logger.warning("saga #%s lost its lease in %s: rolled back", work.saga_id, work.ctx.step)
        return None
    except Exception as exc:  # noqa: BLE001 - any error of a step is that step's failure
        failure = exc
    turn.rows = None  # rolled back: what this runner holds in memory may not have committed
    with transaction.atomic():
        saga = saga_locked(work.saga_id, turn.token)
        if saga is None:
            turn.holding = False
            logger.warning("saga #%s lost its lease during %s", work.saga_id, work.ctx.step)
            return None
        row = SagaStep.objects.select_for_update().get(pk=work.row.pk)
        after = _record_failure(saga, row, work, failure, turn)
    turn.holding = after is not None
    return after


def _call(fn: StepFn, ctx: StepContext) -> Mapping[str, Any] | None:
    result = fn(ctx)
    if result is not None and not isinstance(result, Mapping):
        raise TypeError(f"step {ctx.step} returned {type(result).__name__}")
    return result


def _record_success(
    saga: Saga, row: SagaStep, result: Mapping[str, Any] | None, turn: _Turn
) -> _Work | None:
    step_move(saga, row, StepStatus.SUCCEEDED, finished_at=timezone.now(), error="")
    trace_step(saga, row)
    if result:
        saga.context = {**saga.context, **result}
    return _continue(saga, turn)


def _record_failure(
    saga: Saga, row: SagaStep, work: _Work, exc: Exception, turn: _Turn
) -> _Work | None:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    permanent = not is_transient(exc)
    if not permanent and row.attempts < work.step.attempts_allowed(work.direction):
        step_move(saga, row, StepStatus.RETRYING, error=error)
        trace_step(saga, row, error=error)
        if saga.cancel_requested and work.direction == StepDirection.FORWARD:
            # Cancelled meanwhile: no point waiting to retry what will be compensated.
            return _continue(saga, turn)
        delay = step_backoff(work.step, row.attempts)
        logger.info(
            "saga %s #%s %s attempt %s failed, retry in %.2fs: %s",
            saga.kind, saga.pk, row.name, row.attempts, delay, error,
        )  # fmt: skip
        if delay <= float(settings.SAGA_COUNTDOWN_MAX):
            # Short delays ride on an advance message that waits for its time in a worker
            # (far below the broker's visibility timeout); wake_at stays as the fallback
            # should that message be lost.
            release_lease(saga, wake_in=delay + recover_after())
            enqueue_advance(saga.pk, not_before=time.time() + delay)
        else:
            release_lease(saga, wake_in=delay)  # the sweeper sends it when due
        saga_save(saga)
        return None
    suffix = "failed" if permanent else "retries_exhausted"
    reason = getattr(exc, "reason", None) or f"{row.name}_{suffix}"
    definition = saga_definition(saga.kind)
    if _fail_row(saga, row, definition, reason, error):
        return _continue(saga, turn)  # its compensations, in this turn while it lasts
    release_lease(saga, wake_in=None)
    saga_save(saga)
    return None


def _fail_row(
    saga: Saga, row: SagaStep, definition: SagaDefinition, reason: str, error: str
) -> bool:
    """Marks the row failed and moves the saga on: a forward failure starts compensation, a
    compensation failure parks the saga. True if the saga has compensations left to run."""
    now = timezone.now()
    step_move(saga, row, StepStatus.FAILED, error=error, finished_at=now)
    trace_step(saga, row, error=error)
    if row.direction == StepDirection.FORWARD:
        logger.warning(
            "saga %s #%s step %s failed after %s attempt(s) (%s), compensating: %s",
            saga.kind, saga.pk, row.name, row.attempts, reason, error,
        )  # fmt: skip
        if not saga.cancel_requested:
            saga.failure_reason = reason[:200]
        saga.error = f"{row.name}: {error}"
        begin_compensation(saga, definition)
        return saga.status == SagaStatus.COMPENSATING
    saga_move(saga, SagaStatus.COMPENSATION_FAILED)
    saga.needs_attention = True
    saga.error = f"{row.name}: {error}"
    saga.wake_at = None
    logger.error(
        "saga %s #%s ref=%s parked in compensation_failed: compensation %s failed after %s "
        "attempt(s): %s",
        saga.kind, saga.pk, saga.ref or "-", row.name, row.attempts, error,
    )  # fmt: skip
    return False
