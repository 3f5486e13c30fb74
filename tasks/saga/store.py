"""The saga tables as the engine reads and writes them on its hot path: hand-written
statements, because they run for every step of every saga, and building them with the ORM
cost more Python than anything else in a turn (a quarter of a checkout's worker CPU).

The interface: `saga_insert` and `forward_steps_insert` (a new saga), `saga_take_lease` and
`saga_locked` (the saga row, row-locked, as the lease allows), `forward_rows`, `step_move`
(a step row changed in memory), `saga_save` (the saga and the rows moved since, in one
statement) and `flush_moved_rows` (those rows now, before a query reads step rows)."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection
from django.utils import timezone

from ..models.saga import RUNNABLE, Saga, SagaStep, StepDirection
from .definition import STEP_MACHINE

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
_STEP_FIELDS = [f for f in SagaStep._meta.concrete_fields]
_STEP_COLUMNS = ", ".join(f'"{f.column}"' for f in _STEP_FIELDS)
_STEP_ATTNAMES = [f.attname for f in _STEP_FIELDS]
_FORWARD_ROWS_SQL = (
    f"SELECT {_STEP_COLUMNS} FROM {_STEP_TABLE} "
    'WHERE saga_id = %s AND direction = %s ORDER BY "index" FOR UPDATE'
)
_CONTEXT_FIELD = Saga._meta.get_field("context")


def saga_insert(saga: Saga) -> int | None:
    """Inserts a new (unsaved) saga; returns its id, or None when its kind already has a
    saga with its ref. ON CONFLICT rather than a savepoint around an INSERT that may fail:
    this runs in every order's accepting transaction, and a savepoint is two more round
    trips."""
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                saga.kind,
                saga.ref,
                saga.status,
                _CONTEXT_FIELD.get_db_prep_save(saga.context, connection),
                saga.request_id,
                saga.wake_at,
                saga.created_at,
                saga.updated_at,
            ],
        )
        inserted = cursor.fetchone()
    return None if inserted is None else int(inserted[0])


def forward_steps_insert(saga_id: int, rows: list[tuple[int, str, str]], at: Any) -> None:
    """Inserts a new saga's forward step rows, given as (index, name, status); by hand
    too: the ORM's bulk_create cost a quarter of an order's accepting CPU."""
    params: list[Any] = []
    for index, name, status in rows:
        params += [saga_id, index, name, str(StepDirection.FORWARD), status, at]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_STEPS_SQL + ", ".join([_INSERT_STEP_ROW] * len(rows)), params)


def saga_take_lease(saga_id: int, token: str, lease_seconds: float) -> Saga | None:
    """Takes the lease of a runnable saga whose lease is free or expired, for
    `lease_seconds` (its `wake_at` moves as far): the saga, row-locked, or None."""
    return _fetch_saga(_TAKE_SQL, [token, lease_seconds, lease_seconds, saga_id, _RUNNABLE_VALUES])


def saga_locked(saga_id: int, token: str) -> Saga | None:
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


def forward_rows(saga_id: int) -> list[SagaStep]:
    """The saga's forward step rows in step order, row-locked (a plain cursor, as above:
    the queryset's model iteration cost more Python than the statement)."""
    with connection.cursor() as cursor:
        cursor.execute(_FORWARD_ROWS_SQL, [saga_id, StepDirection.FORWARD.value])
        rows = cursor.fetchall()
    return [SagaStep.from_db(connection.alias, _STEP_ATTNAMES, list(row)) for row in rows]


def saga_save(saga: Saga) -> None:
    """What `saga.save()` writes, for a saga read by `saga_locked` in this transaction: every
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


def flush_moved_rows(saga: Saga) -> None:
    """Writes the moved step rows now: before anything reads step rows from the database."""
    rows = _take_moved_rows(saga)
    if rows:
        SagaStep.objects.bulk_update(
            rows, ["status", "attempts", "error", "started_at", "finished_at", "at"]
        )


def step_move(saga: Saga, row: SagaStep, target: str, **fields: Any) -> None:
    """STEP_MACHINE.move for a row the runner holds (under the lease and the saga's row
    lock nobody else writes it): checks the transition and changes the row in memory; the
    next `saga_save(saga)` of this transaction writes it."""
    STEP_MACHINE.move(row, target, fields=fields, save=False)
    row.at = timezone.now()
    saga._moved_rows[row.pk] = row  # type: ignore[attr-defined]
