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
is called, so a crash is visible and the attempt is counted; the step is then run again.

Local and remote steps. A step's `kind` says where its functions run. A LOCAL step (the
default: database work) runs inside the transaction that records its success: its database
writes commit together with `succeeded` (exactly once) and roll back if it raises or if the
runner lost its lease meanwhile. A REMOTE step (a call to another service: a payment, SMTP,
Web Push) runs outside any transaction, so no connection sits idle in transaction (and no
row lock is held) while it waits; its outcome is then recorded in a short transaction, still
only while the runner holds the lease, where its optional `record` (`compensate_record`)
function does the step's database writes, told the call's result. A remote call may
therefore happen twice (a retry, a lost lease, a crash before the record): key it with
`ctx.idempotency_key`, which is stable across attempts. The runner refuses to call a remote
step inside a transaction (TransactionManagementError), and clients of remote services
check it too (apps/orders/payments.py).

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
rule delivers long retry delays (no broker ETA longer than SAGA_COUNTDOWN_MAX: a shorter
retry rides on an advance message that waits in a worker), recovers lost
advance messages, and resumes sagas whose runner died mid-step (the lease expires, the step
still reads `running`, and the next runner counts it as a spent attempt).

Where turns run. `tasks.saga_advance` is routed to the `saga` queue (config/celery.py), which
the Procfile's `worker_saga` consumes with a threads pool: a turn mostly waits on the
services its steps call, and threads wait on many at once. Each thread has its own database
connection (tasks/signals.py recycles it around each task). A threads pool enforces no time
limits; nothing here relies on them: a runner that outlives its lease finds it gone under
the row lock and rolls back, and step functions bound their own calls (timeouts).

Settings. The SAGA_* settings (backoff, turn budget, time limits and lease margins, the wake
batch) are read in config/settings.py and listed with their defaults in .env.example; the
engine reads them at each use, except the time limits and the lease, fixed when this
package is imported (see `definition`). What they must keep true: the lease outlasts the
hard limit (an expired lease means a dead runner), and a short retry's delay
(SAGA_COUNTDOWN_MAX at most) stays far below the broker's visibility timeout.

The package: `definition` (steps, the registry, the state machines), `services` (start,
cancel, resume, run now, the wake sweep, reads), `runner` (a turn), `moves` (state changes
both share), `store` (the hand-written statements of the hot path), `jobs` (the Celery
tasks). The saga advances itself by task name, through the outbox: no module imports `jobs`
but this one.
"""

from __future__ import annotations

from .definition import (
    SAGA_MACHINE,
    STEP_MACHINE,
    NotCancellable,
    SagaDefinition,
    Step,
    StepContext,
    StepFailed,
    StepKind,
    StepRetry,
    define_saga,
    saga_definition,
)
from .jobs import advance_saga, wake_sagas  # the Celery tasks, registered on import
from .runner import saga_advance
from .services import (
    saga_cancel,
    saga_get,
    saga_get_by_ref,
    saga_resume_compensation,
    saga_run_now,
    saga_start,
    saga_step_list,
    sagas_wake_due,
)

__all__ = [
    "SAGA_MACHINE",
    "STEP_MACHINE",
    "NotCancellable",
    "SagaDefinition",
    "Step",
    "StepContext",
    "StepFailed",
    "StepKind",
    "StepRetry",
    "advance_saga",
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
    "wake_sagas",
]
