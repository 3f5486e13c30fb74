"""Saga orchestrator: multi-step flows whose every step and compensation is a recorded row.

Defining a saga. An app registers its sagas at import time in `apps/<app>/sagas.py`, which its
`AppConfig.ready()` imports (so web processes, workers and beat all know every kind):

    define_saga("shop.checkout", steps=[
        Step("reserve", forward=reserve, compensate=release, compensate_name="release"),
        Step("capture", forward=capture, point_of_no_return=True),
    ])

A step function takes a `StepContext` and returns None or a dict merged into the saga's
context. `StepRetry`/`tasks.errors.Transient` and the other transient errors of
`tasks.base.is_transient` (connection resets, timeouts) are retried with exponential backoff
and full jitter up to `max_attempts`, after which the step fails with reason
"<step>_retries_exhausted" (or the `reason` the error carries); `StepFailed(reason)`,
`tasks.errors.Permanent` and any other error (a bug retried is still a bug) fail it at once,
with reason "<step>_failed" unless the error carries one. A failed step runs the
compensations of the steps that succeeded, newest first; compensations retry the same way
and, when they run out (or fail permanently), the saga is parked as `compensation_failed`
(`needs_attention`, an ERROR log line) until an operator calls `saga_resume_compensation`
(the admin's "Retry compensation").

Step functions must be idempotent. Each attempt is committed as `running` before the function
is called, so a crash is visible and the attempt is counted; the step is then run again. The
function runs inside the transaction that records its success: its database writes commit
together with `succeeded` (exactly once) and roll back if it raises or if the runner lost its
lease meanwhile. Effects outside the database (an HTTP call, a payment) may happen twice: key
them with `ctx.idempotency_key`.

Running. `saga_start` writes the saga in the caller's transaction and enqueues
`tasks.saga_advance` through the outbox. Each advance (a "turn") takes the saga's lease (a
conditional UPDATE, so a saga never has two runners: a second one returns quietly) and runs
steps one after the other while they succeed and the turn's time budget lasts
(SAGA_TURN_BUDGET): the transaction that records a step's success also marks the next step
`running`, so a turn of n steps costs n + 1 commits and no broker message between them. A
turn ends, releasing the lease and enqueueing the next advance, when its budget is spent; a
retry waits for its backoff in a new turn; a finished or parked saga simply releases the
lease. Every runnable saga carries `wake_at`; the beat task
`tasks.saga_wake` re-enqueues sagas whose `wake_at` has passed and whose lease is free. That one
rule delivers long retry delays (no broker ETA longer than `SAGA_COUNTDOWN_MAX`), recovers lost
advance messages, and resumes sagas whose runner died mid-step (the lease expires, the step
still reads `running`, and the next runner counts it as a spent attempt).

Where turns run. `tasks.saga_advance` is routed to the `saga` queue (config/celery.py), which
the Procfile's `worker_saga` consumes with a threads pool: a turn mostly waits on the
services its steps call, and threads wait on many at once. Each thread has its own database
connection (tasks/signals.py recycles it around each task). A threads pool enforces no time
limits; nothing here relies on them: a runner that outlives its lease finds it gone under
the row lock and rolls back, and step functions bound their own calls (timeouts).

Knobs (Django setting, else environment variable, else default): SAGA_BACKOFF_BASE (1 s),
SAGA_BACKOFF_MAX (60 s), SAGA_COUNTDOWN_MAX (5 s), SAGA_RECOVER_AFTER (60 s: how long a queued
advance may wait before the sweeper sends another), SAGA_STEP_TIME_LIMIT (60 s soft limit of a
turn; the lease outlasts the hard limit so an expired lease means a dead runner),
SAGA_TURN_BUDGET (2 s: a turn starts no new step after this long, so one saga never holds a
worker for long while others wait), SAGA_WAKE_BATCH (500).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from . import tracing
from .base import SurgeTask, backoff_delay, is_transient
from .context import get_request_id, reset_request_id, set_request_id
from .errors import IllegalTransition, Permanent, Transient
from .models.saga import RUNNABLE, Saga, SagaStatus, SagaStep, StepDirection, StepStatus
from .outbox import outbox_enqueue
from .statemachine import StateMachine

__all__ = [
    "SAGA_MACHINE",
    "STEP_MACHINE",
    "NotCancellable",
    "SagaDefinition",
    "Step",
    "StepContext",
    "StepFailed",
    "StepRetry",
    "define_saga",
    "saga_advance",
    "saga_cancel",
    "saga_definition",
    "saga_get",
    "saga_get_by_ref",
    "saga_resume_compensation",
    "saga_run_now",
    "saga_start",
    "saga_step_list",
    "sagas_wake_due",
]

logger = logging.getLogger(__name__)

S, T = SagaStatus, StepStatus

SAGA_MACHINE = StateMachine(
    "saga",
    {
        S.PENDING: {S.RUNNING, S.COMPENSATING},
        S.RUNNING: {S.COMPLETED, S.COMPENSATING},
        S.COMPENSATING: {S.FAILED, S.CANCELLED, S.COMPENSATION_FAILED},
        S.COMPENSATION_FAILED: {S.COMPENSATING},
    },
)

# One table for forward and compensation rows. running -> running is a re-run after the
# previous runner was lost mid-attempt; failed -> pending is an operator's resume of a
# compensation (forward rows are never resumed).
STEP_MACHINE = StateMachine(
    "saga step",
    {
        T.PENDING: {T.RUNNING, T.SKIPPED},
        T.RUNNING: {T.RUNNING, T.SUCCEEDED, T.RETRYING, T.FAILED},
        T.RETRYING: {T.RUNNING, T.FAILED},
        T.FAILED: {T.PENDING},
    },
)


def _knob(name: str, default: float) -> float:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


STEP_SOFT_LIMIT = _knob("SAGA_STEP_TIME_LIMIT", 60.0)
STEP_HARD_LIMIT = STEP_SOFT_LIMIT + 15
# Longer than the hard limit: once a lease has expired its runner is dead (or rolls back).
LEASE_SECONDS = STEP_HARD_LIMIT + 15


# --- Definitions -------------------------------------------------------------------------


class StepFailed(Permanent):
    """Raised by a step to fail it now; `reason` becomes the saga's failure_reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class StepRetry(Transient):
    """Raised by a step to be retried; `reason` is used if its retries run out."""

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or reason or "retry")
        self.reason = reason


class NotCancellable(IllegalTransition):
    """saga_cancel on a saga past its point of no return (or already finished)."""

    def __init__(self, current: str, step: str = "") -> None:
        super().__init__("saga", current, SagaStatus.CANCELLED)
        self.step = step


@dataclass(frozen=True)
class StepContext:
    """What a step or compensation function is told about the attempt in hand."""

    saga_id: int
    kind: str
    ref: str
    step: str
    direction: str
    attempt: int
    context: dict[str, Any]
    failure_reason: str = ""
    request_id: str = ""

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of this step: give it to external services."""
        return f"saga:{self.saga_id}:{self.direction}:{self.step}"


StepFn = Callable[[StepContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Step:
    name: str
    forward: StepFn
    compensate: StepFn | None = None
    compensate_name: str = ""
    max_attempts: int = 5
    compensate_max_attempts: int = 0  # 0: same as max_attempts
    backoff_base: float | None = None
    backoff_max: float | None = None
    # Once this step has started, saga_cancel refuses (NotCancellable).
    point_of_no_return: bool = False
    # Decided once, from the context the saga starts with: a step whose `skip_if(context)`
    # is true is written `skipped` and never runs (nor, having not run, its compensation),
    # so a step known to have nothing to do costs no transaction.
    skip_if: Callable[[Mapping[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        if not self.compensate_name:
            object.__setattr__(self, "compensate_name", f"undo_{self.name}")
        if self.compensate_max_attempts <= 0:
            object.__setattr__(self, "compensate_max_attempts", self.max_attempts)
        if self.max_attempts < 1:
            raise ValueError(f"step {self.name}: max_attempts must be >= 1")

    def attempts_allowed(self, direction: str) -> int:
        if direction == StepDirection.FORWARD:
            return self.max_attempts
        return self.compensate_max_attempts


@dataclass(frozen=True)
class SagaDefinition:
    kind: str
    steps: tuple[Step, ...] = field(default_factory=tuple)
    # Called with (saga, new status) inside the transaction that changes the status, so an
    # app can keep its own row's status in step with the saga (never out of step).
    on_status: Callable[[Saga, str], None] | None = None

    def step_at(self, index: int, name: str, direction: str) -> Step | None:
        """The step a row refers to, or None if the definition changed under the saga."""
        if index >= len(self.steps):
            return None
        step = self.steps[index]
        if direction == StepDirection.FORWARD:
            return step if step.name == name else None
        return step if step.compensate and step.compensate_name == name else None


_REGISTRY: dict[str, SagaDefinition] = {}


def define_saga(
    kind: str,
    *,
    steps: Sequence[Step],
    on_status: Callable[[Saga, str], None] | None = None,
) -> SagaDefinition:
    """Registers a saga kind. Re-importing a module may define it again with the same step
    names; two different definitions of one kind are a bug and raise."""
    names = [s.name for s in steps] + [s.compensate_name for s in steps if s.compensate]
    if not steps or len(names) != len(set(names)):
        raise ValueError(f"saga {kind}: needs steps, with unique step/compensation names")
    definition = SagaDefinition(kind=kind, steps=tuple(steps), on_status=on_status)
    existing = _REGISTRY.get(kind)
    if existing and [s.name for s in existing.steps] != [s.name for s in steps]:
        raise ValueError(f"saga {kind} is already defined with other steps")
    _REGISTRY[kind] = definition
    return definition


def saga_definition(kind: str) -> SagaDefinition:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise LookupError(
            f"saga kind {kind!r} is not defined (is its sagas module imported?)"
        ) from None


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
            wake_at=now + timedelta(seconds=_recover_after() if publish else 0),
            created_at=now,
            updated_at=now,
        )
        with connection.cursor() as cursor:
            # ON CONFLICT rather than a savepoint around an INSERT that may fail: this runs
            # in every order's accepting transaction, and a savepoint is two more round trips.
            cursor.execute(
                _INSERT_SQL,
                [
                    saga.kind,
                    saga.ref,
                    saga.status,
                    _CONTEXT_FIELD.get_db_prep_save(saga.context, connection),
                    saga.request_id,
                    saga.wake_at,
                    now,
                    now,
                ],
            )
            inserted = cursor.fetchone()
        if inserted is None:  # the ref is taken: that saga is the one
            return Saga.objects.get(kind=kind, ref=ref)
        saga.pk = inserted[0]
        saga._state.adding, saga._state.db = False, connection.alias
        # By hand too: the ORM's bulk_create cost a quarter of an order's accepting CPU.
        params: list[Any] = []
        for i, step in enumerate(definition.steps):
            skipped = step.skip_if is not None and step.skip_if(saga.context)
            status = StepStatus.SKIPPED if skipped else StepStatus.PENDING
            params += [saga.pk, i, step.name, str(StepDirection.FORWARD), str(status), now]
        with connection.cursor() as cursor:
            cursor.execute(
                _INSERT_STEPS_SQL + ", ".join([_INSERT_STEP_ROW] * len(definition.steps)), params
            )
        _trace_status(saga, "", SagaStatus.PENDING)
        if publish:
            _enqueue_advance(saga.pk)
    return saga


def saga_advance(*, saga_id: int, budget: float | None = None) -> bool:
    """Runs one turn of the saga: its steps (or compensations) one after the other, while
    they succeed and `budget` seconds (default SAGA_TURN_BUDGET) have not passed since the
    turn began. A step is only started within the budget, but the first step of a turn always
    runs: a budget of 0 runs exactly one step per turn.

    Invariant: at most one runner per saga. The lease is taken by a conditional UPDATE; a
    caller that finds it held (or the saga finished) returns False and changes nothing.
    """
    if budget is None:
        budget = _knob("SAGA_TURN_BUDGET", 2.0)
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
            _begin_compensation(saga, definition)
            # A runner past its expired lease must not record anything after this.
            saga.lease_token, saga.lease_until = "", None
            if saga.status in RUNNABLE:
                saga.wake_at = timezone.now() + timedelta(seconds=_recover_after())
                _enqueue_advance(saga.pk)
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
        _saga_move(saga, SagaStatus.COMPENSATING)
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
        saga.wake_at = timezone.now() + timedelta(seconds=_recover_after())
        saga.save()
        _enqueue_advance(saga.pk)
    logger.info("saga %s #%s compensation resumed", saga.kind, saga.pk)
    return saga


def saga_run_now(*, saga_id: int) -> bool:
    """Asks for a turn now (the admin's "Run now"): clears `needs_attention` of a runnable
    saga and enqueues an advance. Harmless on a saga that is running: the lease decides."""
    with transaction.atomic():
        moved = Saga.objects.filter(pk=saga_id, status__in=RUNNABLE).update(
            needs_attention=False,
            wake_at=Now() + timedelta(seconds=_recover_after()),
        )
        if moved:
            _enqueue_advance(saga_id)
    return bool(moved)


def sagas_wake_due(*, limit: int | None = None) -> int:
    """Re-enqueues runnable sagas whose `wake_at` has passed and whose lease is free: retries
    that are due, advance messages that were lost, runners that died mid-step. Pushes each
    one's `wake_at` forward so a queued advance is not sent again at every sweep. SKIP LOCKED:
    several beat hosts never pick the same saga. Returns how many were enqueued."""
    limit = limit or int(_knob("SAGA_WAKE_BATCH", 500))
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
                wake_at=Now() + timedelta(seconds=_recover_after())
            )
            for saga_id in due:
                _enqueue_advance(saga_id)
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


# --- Engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Work:
    saga_id: int
    row: SagaStep
    step: Step
    direction: str
    fn: StepFn
    ctx: StepContext


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
        saga = _fetch_saga(
            _TAKE_SQL, [turn.token, LEASE_SECONDS, LEASE_SECONDS, turn.saga_id, _RUNNABLE_VALUES]
        )
        if saga is None:
            return None
        set_request_id(saga.request_id or get_request_id())
        planned = _plan(saga, turn)
        work = None if planned is None else _start_attempt(saga, *planned)
        if work is None:
            _end_lease(saga)  # nothing to run: the lease ends with this state change
        _save(saga)
    turn.taken = True
    turn.holding = work is not None
    return work


# The runner's statements on every step, written by hand: building them with the ORM cost
# more Python than anything else in a turn (a quarter of a checkout's worker CPU).
_SAGA_TABLE = f'"{Saga._meta.db_table}"'
_STEP_TABLE = f'"{SagaStep._meta.db_table}"'
_SAGA_FIELDS = [f for f in Saga._meta.concrete_fields]
_SAGA_COLUMNS = ", ".join(f'"{f.column}"' for f in _SAGA_FIELDS)
_SAGA_ATTNAMES = [f.attname for f in _SAGA_FIELDS]
_LOCK_SQL = (
    f"SELECT {_SAGA_COLUMNS} FROM {_SAGA_TABLE} WHERE id = %s AND lease_token = %s FOR UPDATE"
)
# Every column a runner may change; the others (kind, ref, request_id, created_at) never do.
_SAVE_SQL = (
    f"UPDATE {_SAGA_TABLE} SET status = %s, context = %s, current_step = %s, "
    "failure_reason = %s, error = %s, needs_attention = %s, cancel_requested = %s, "
    "lease_token = %s, lease_until = %s, wake_at = %s, finished_at = %s, updated_at = %s "
    "WHERE id = %s"
)
# The step rows the runner changed since the last save, written by the same statement as
# the saga (a data-modifying CTE): one round trip per step transition instead of three.
_STEP_VALUES_FIRST = (
    "(%s::bigint, %s::varchar, %s::integer, %s::text, %s::timestamptz, %s::timestamptz, "
    "%s::timestamptz)"
)
_STEP_VALUES_MORE = "(%s, %s, %s, %s, %s, %s, %s)"
_STEPS_CTE = (
    f"WITH moved AS (UPDATE {_STEP_TABLE} AS step SET status = v.status, "
    "attempts = v.attempts, error = v.error, started_at = v.started_at, "
    "finished_at = v.finished_at, at = v.at "
    "FROM (VALUES {values}) AS v(id, status, attempts, error, started_at, finished_at, at) "
    "WHERE step.id = v.id) "
)
# A new saga; nothing when one of its kind has its ref (the partial unique index).
_INSERT_SQL = (
    f"INSERT INTO {_SAGA_TABLE} (kind, ref, status, context, current_step, request_id, "
    "failure_reason, error, needs_attention, cancel_requested, lease_token, lease_until, "
    "wake_at, created_at, updated_at, finished_at) "
    "VALUES (%s, %s, %s, %s, 0, %s, '', '', false, false, '', NULL, %s, %s, %s, NULL) "
    "ON CONFLICT (kind, ref) WHERE NOT (ref = '') DO NOTHING RETURNING id"
)
# A new saga's forward step rows (the model's defaults written out).
_INSERT_STEPS_SQL = (
    f'INSERT INTO {_STEP_TABLE} (saga_id, "index", name, direction, status, attempts, error, '
    "started_at, finished_at, at) VALUES "
)
_INSERT_STEP_ROW = "(%s, %s, %s, %s, %s, 0, '', NULL, NULL, %s)"
# The lease, taken only from a runnable saga whose lease is free or expired; the UPDATE
# holds the row lock from then on and returns the row, so no second read is needed.
_TAKE_SQL = (
    f"UPDATE {_SAGA_TABLE} SET lease_token = %s, "
    "lease_until = STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second', "
    "wake_at = STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second' WHERE id = %s "
    "AND status = ANY(%s) "
    "AND (lease_until IS NULL OR lease_until < STATEMENT_TIMESTAMP()) "
    f"RETURNING {_SAGA_COLUMNS}"
)
_RUNNABLE_VALUES = [str(status.value) for status in RUNNABLE]
_CONTEXT_FIELD = Saga._meta.get_field("context")


def _locked(saga_id: int, token: str) -> Saga | None:
    """The saga, row-locked, if `token` still holds its lease."""
    return _fetch_saga(_LOCK_SQL, [saga_id, token])


def _fetch_saga(sql: str, params: list[Any]) -> Saga | None:
    """The saga row that `sql` returns (all its columns, in field order), or None. A plain
    cursor: a raw queryset costs more Python per turn than the statement itself."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = dict(zip(_SAGA_ATTNAMES, row, strict=True))
    if isinstance(values["context"], str):  # Django has psycopg2 hand jsonb over as text
        values["context"] = json.loads(values["context"])
    saga = Saga.from_db(connection.alias, _SAGA_ATTNAMES, list(values.values()))
    saga._moved_rows = {}  # type: ignore[attr-defined]
    return saga


def _save(saga: Saga) -> None:
    """What `saga.save()` writes, for a saga read by `_locked` in this transaction: every
    column a runner changes, from the row as it stands in memory (the lock makes it so),
    and, in the same statement, the step rows moved since the last save."""
    saga.updated_at = timezone.now()
    params: list[Any] = []
    sql = _SAVE_SQL
    moved = _take_moved_rows(saga)
    if moved:
        values = ", ".join([_STEP_VALUES_FIRST] + [_STEP_VALUES_MORE] * (len(moved) - 1))
        sql = _STEPS_CTE.format(values=values) + sql
        for row in moved:
            params += [row.pk, row.status, row.attempts, row.error, row.started_at,
                       row.finished_at, row.at]  # fmt: skip
    params += [
        saga.status,
        _CONTEXT_FIELD.get_db_prep_save(saga.context, connection),
        saga.current_step,
        saga.failure_reason,
        saga.error,
        saga.needs_attention,
        saga.cancel_requested,
        saga.lease_token,
        saga.lease_until,
        saga.wake_at,
        saga.finished_at,
        saga.updated_at,
        saga.pk,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _take_moved_rows(saga: Saga) -> list[SagaStep]:
    moved: dict[int, SagaStep] = getattr(saga, "_moved_rows", {})
    rows = list(moved.values())
    moved.clear()
    return rows


def _flush_moved_rows(saga: Saga) -> None:
    """Writes the moved step rows now: before anything reads step rows from the database."""
    rows = _take_moved_rows(saga)
    if rows:
        SagaStep.objects.bulk_update(
            rows, ["status", "attempts", "error", "started_at", "finished_at", "at"]
        )


def _move_step(saga: Saga, row: SagaStep, target: str, **fields: Any) -> None:
    """STEP_MACHINE.move for a row the runner holds (under the lease and the saga's row
    lock nobody else writes it): checks the transition and changes the row in memory; the
    next `_save(saga)` of this transaction writes it."""
    STEP_MACHINE.move(row, target, fields=fields, save=False)
    row.at = timezone.now()
    saga._moved_rows[row.pk] = row  # type: ignore[attr-defined]


def _plan(saga: Saga, turn: _Turn) -> tuple[SagaStep, Step] | None:
    """State-only moves until a function must be called: returns the row to run next and
    its step (not started yet), or None when there is nothing to run. Runs under the lease
    and the saga's row lock; the caller saves."""
    definition = _REGISTRY.get(saga.kind)
    if definition is None:
        _needs_attention(saga, f"saga kind {saga.kind!r} is not defined in this process")
        return None
    while True:
        if saga.status == SagaStatus.PENDING:
            if saga.cancel_requested:
                _begin_compensation(saga, definition)
            else:
                _saga_move(saga, SagaStatus.RUNNING)
            continue
        if saga.status == SagaStatus.RUNNING:
            if saga.cancel_requested:
                _begin_compensation(saga, definition)
                continue
            direction = StepDirection.FORWARD
            if turn.rows is None:
                turn.rows = list(
                    saga.steps.select_for_update().filter(direction=direction).order_by("index")
                )
            row = next((r for r in turn.rows if r.status not in _FORWARD_DONE), None)
            if row is None:
                _saga_move(saga, SagaStatus.COMPLETED)
                saga.finished_at, saga.wake_at = timezone.now(), None
                return None
        elif saga.status == SagaStatus.COMPENSATING:
            turn.rows = None  # _begin_compensation changed forward rows in bulk
            direction = StepDirection.COMPENSATION
            _flush_moved_rows(saga)
            row = (
                saga.steps.select_for_update()
                .filter(direction=direction)
                .exclude(status=StepStatus.SUCCEEDED)
                .order_by("id")
                .first()
            )
            if row is None:
                _finish_compensation(saga)
                return None
        else:
            return None  # finished or parked: nothing to run
        step = definition.step_at(row.index, row.name, row.direction)
        if step is None:
            _needs_attention(saga, f"step {row.index} {row.name!r} is no longer defined")
            return None
        if row.status == StepStatus.RUNNING and row.attempts >= step.attempts_allowed(direction):
            # Its last allowed attempt was running when the runner was lost.
            error = f"runner lost during attempt {row.attempts}"
            if _fail_row(saga, row, definition, f"{row.name}_retries_exhausted", error):
                continue
            return None
        return row, step


def _start_attempt(saga: Saga, row: SagaStep, step: Step) -> _Work:
    _move_step(
        saga,
        row,
        StepStatus.RUNNING,
        attempts=row.attempts + 1,
        started_at=row.started_at or timezone.now(),
    )
    saga.current_step = row.index
    _trace_step(saga, row)
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
    return _Work(saga.pk, row, step, row.direction, fn, ctx)


def _continue(saga: Saga, turn: _Turn) -> _Work | None:
    """After a step's outcome, in the transaction that records it: starts the next step
    while the turn's budget lasts; else hands the saga to a new turn (a fresh message).
    A saga with nothing left to run finishes here either way. Saves the saga."""
    planned = _plan(saga, turn)
    work = None
    if planned is None:
        _end_lease(saga)
    elif time.monotonic() < turn.deadline:
        work = _start_attempt(saga, *planned)
    else:
        _release(saga, wake_in=_recover_after())
        _enqueue_advance(saga.pk)
    _save(saga)
    return work


def _run(turn: _Turn, work: _Work) -> _Work | None:
    """Calls the function, then records its outcome — only while still holding the lease.
    Returns the next step to run in this turn, if any (already committed as running)."""
    try:
        with transaction.atomic():
            result = work.fn(work.ctx)
            if result is not None and not isinstance(result, Mapping):
                raise TypeError(f"step {work.ctx.step} returned {type(result).__name__}")
            saga = _locked(work.saga_id, turn.token)
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
        saga = _locked(work.saga_id, turn.token)
        if saga is None:
            turn.holding = False
            logger.warning("saga #%s lost its lease during %s", work.saga_id, work.ctx.step)
            return None
        row = SagaStep.objects.select_for_update().get(pk=work.row.pk)
        after = _record_failure(saga, row, work, failure, turn)
    turn.holding = after is not None
    return after


def _record_success(
    saga: Saga, row: SagaStep, result: Mapping[str, Any] | None, turn: _Turn
) -> _Work | None:
    _move_step(saga, row, StepStatus.SUCCEEDED, finished_at=timezone.now(), error="")
    _trace_step(saga, row)
    if result:
        saga.context = {**saga.context, **result}
    return _continue(saga, turn)


def _record_failure(
    saga: Saga, row: SagaStep, work: _Work, exc: Exception, turn: _Turn
) -> _Work | None:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    permanent = not is_transient(exc)
    if not permanent and row.attempts < work.step.attempts_allowed(work.direction):
        _move_step(saga, row, StepStatus.RETRYING, error=error)
        _trace_step(saga, row, error=error)
        if saga.cancel_requested and work.direction == StepDirection.FORWARD:
            # Cancelled meanwhile: no point waiting to retry what will be compensated.
            return _continue(saga, turn)
        delay = _backoff(work.step, row.attempts)
        logger.info(
            "saga %s #%s %s attempt %s failed, retry in %.2fs: %s",
            saga.kind, saga.pk, row.name, row.attempts, delay, error,
        )  # fmt: skip
        if delay <= _knob("SAGA_COUNTDOWN_MAX", 5.0):
            # Short delays ride on the broker (far below its visibility timeout); wake_at
            # stays as the fallback should that message be lost.
            _release(saga, wake_in=delay + _recover_after())
            saga_id = saga.pk
            transaction.on_commit(
                lambda: advance_saga.apply_async(args=[saga_id], countdown=delay), robust=True
            )
        else:
            _release(saga, wake_in=delay)  # the sweeper sends it when due
        _save(saga)
        return None
    suffix = "failed" if permanent else "retries_exhausted"
    reason = getattr(exc, "reason", None) or f"{row.name}_{suffix}"
    definition = saga_definition(saga.kind)
    if _fail_row(saga, row, definition, reason, error):
        return _continue(saga, turn)  # its compensations, in this turn while it lasts
    _release(saga, wake_in=None)
    _save(saga)
    return None


def _fail_row(
    saga: Saga, row: SagaStep, definition: SagaDefinition, reason: str, error: str
) -> bool:
    """Marks the row failed and moves the saga on: a forward failure starts compensation, a
    compensation failure parks the saga. True if the saga has compensations left to run."""
    now = timezone.now()
    _move_step(saga, row, StepStatus.FAILED, error=error, finished_at=now)
    _trace_step(saga, row, error=error)
    if row.direction == StepDirection.FORWARD:
        logger.warning(
            "saga %s #%s step %s failed after %s attempt(s) (%s), compensating: %s",
            saga.kind, saga.pk, row.name, row.attempts, reason, error,
        )  # fmt: skip
        if not saga.cancel_requested:
            saga.failure_reason = reason[:200]
        saga.error = f"{row.name}: {error}"
        _begin_compensation(saga, definition)
        return saga.status == SagaStatus.COMPENSATING
    _saga_move(saga, SagaStatus.COMPENSATION_FAILED)
    saga.needs_attention = True
    saga.error = f"{row.name}: {error}"
    saga.wake_at = None
    logger.error(
        "saga %s #%s ref=%s parked in compensation_failed: compensation %s failed after %s "
        "attempt(s): %s",
        saga.kind, saga.pk, saga.ref or "-", row.name, row.attempts, error,
    )  # fmt: skip
    return False


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
