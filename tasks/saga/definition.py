"""Defining sagas: steps, their context, the registry, and the state machines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.conf import settings

from ..errors import IllegalTransition, Permanent, Transient
from ..models.saga import Saga, SagaStatus, StepDirection, StepStatus
from ..statemachine import StateMachine

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


# Read once, at import, unlike the other SAGA_* settings (read at each use): the two limits
# are arguments of the advance task's decorator (tasks/saga/jobs.py), and the lease must
# outlast the hard limit that task was registered with, so all three come from one reading.
STEP_SOFT_LIMIT = float(settings.SAGA_STEP_TIME_LIMIT)
STEP_HARD_LIMIT = STEP_SOFT_LIMIT + float(settings.SAGA_HARD_LIMIT_MARGIN)
# Longer than the hard limit: once a lease has expired its runner is dead (or rolls back).
LEASE_SECONDS = STEP_HARD_LIMIT + float(settings.SAGA_LEASE_MARGIN)


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


class StepKind(StrEnum):
    """Where a step's functions run (see the package docstring).

    LOCAL: inside the transaction that records the outcome, so database writes commit
    exactly once, together with `succeeded`. REMOTE: outside any transaction (a call to
    another service: no connection is held idle in transaction while it waits); its
    `record` function then runs in the short transaction that records the outcome."""

    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True)
class Step:
    name: str
    forward: StepFn
    compensate: StepFn | None = None
    compensate_name: str = ""
    # Applies to the forward function and the compensation alike.
    kind: StepKind = StepKind.LOCAL
    # REMOTE only: local functions run in the recording transaction after the remote
    # forward (or compensation) function returned, told its result in `ctx.context`. What
    # they return is merged into the saga's context too.
    record: StepFn | None = None
    compensate_record: StepFn | None = None
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
        if self.kind != StepKind.REMOTE and (self.record or self.compensate_record):
            raise ValueError(f"step {self.name}: only a remote step has record functions")

    @property
    def remote(self) -> bool:
        return self.kind == StepKind.REMOTE

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


def saga_definition_or_none(kind: str) -> SagaDefinition | None:
    """The registered definition of `kind`, or None if this process does not know it."""
    return _REGISTRY.get(kind)


def saga_definition(kind: str) -> SagaDefinition:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise LookupError(
            f"saga kind {kind!r} is not defined (is its sagas module imported?)"
        ) from None
