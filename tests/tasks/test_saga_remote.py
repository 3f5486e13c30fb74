"""Local and remote saga steps, and the advance message of a short retry.

A remote step's function runs outside any transaction; its outcome (and its `record`
function) commits in a short transaction afterwards, only while the runner holds the lease.
Turns are driven from the test process, outside any transaction (transactional tests).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.db.transaction import TransactionManagementError

from tasks.models import OutboxMessage
from tasks.models.saga import Saga, SagaStatus, SagaStep
from tasks.saga import Step, StepContext, StepFailed, StepKind, StepRetry, define_saga, saga_advance
from tests.toolkit_app.models.saga import SagaEffect, SagaLedger
from tests.toolkit_app.tasks.saga import DEMO

from ..harness import LiveProcess, wait_for

# What each function saw, in call order: (function, inside a transaction, context seen).
SEEN: list[tuple[str, bool, dict[str, Any]]] = []


def _saw(name: str, ctx: StepContext) -> None:
    SEEN.append((name, connection.in_atomic_block, dict(ctx.context)))


def _effect(ctx: StepContext) -> None:
    ledger_id = ctx.context["ledger_id"]
    SagaEffect.objects.create(
        ledger_id=ledger_id,
        saga_id=ctx.saga_id,
        step=ctx.step,
        direction=ctx.direction,
        attempt=ctx.attempt,
    )


def call(ctx: StepContext) -> dict[str, Any]:
    _saw("call", ctx)
    script = ctx.context
    if ctx.attempt <= script.get("call_fails", 0):
        raise StepRetry("the service said 503")
    if script.get("steal_lease"):
        # Committed at once (no transaction): the runner no longer holds the lease when
        # it comes to record the outcome.
        Saga.objects.filter(pk=ctx.saga_id).update(lease_token="another-runner")
    return {"answer": f"answer-{ctx.attempt}"}


def record_call(ctx: StepContext) -> dict[str, Any]:
    _saw("record_call", ctx)
    _effect(ctx)
    return {"recorded": ctx.context["answer"]}


def undo_call(ctx: StepContext) -> None:
    _saw("undo_call", ctx)


def record_undo(ctx: StepContext) -> None:
    _saw("record_undo", ctx)
    _effect(ctx)


def last(ctx: StepContext) -> None:
    _saw("last", ctx)
    if ctx.context.get("fail_last"):
        raise StepFailed("last_refused")
    _effect(ctx)


REMOTE = define_saga(
    "toolkit.remote",
    steps=[
        Step(
            "call",
            kind=StepKind.REMOTE,
            forward=call,
            record=record_call,
            compensate=undo_call,
            compensate_record=record_undo,
            compensate_name="undo_call",
            backoff_base=0.01,
            backoff_max=0.01,
        ),
        Step("last", forward=last),
    ],
)


def _start(**script: Any) -> Saga:
    from tasks.saga import saga_start

    SEEN.clear()
    ledger = SagaLedger.objects.create(name=uuid.uuid4().hex[:8])
    return saga_start(
        kind="toolkit.remote",
        ref=uuid.uuid4().hex,
        context={"ledger_id": ledger.pk, **script},
        publish=False,
    )


def _rows(saga: Saga) -> list[tuple[str, str, int]]:
    return list(SagaStep.objects.filter(saga=saga).values_list("name", "status", "attempts"))


def _effects(saga: Saga) -> list[str]:
    return list(SagaEffect.objects.filter(saga_id=saga.pk).values_list("step", flat=True))


def test_only_remote_steps_may_have_record_functions() -> None:
    with pytest.raises(ValueError, match="only a remote step"):
        Step("x", forward=last, record=last)


@pytest.mark.django_db(transaction=True)
def test_a_remote_step_runs_outside_any_transaction_and_records_in_one() -> None:
    saga = _start()
    assert saga_advance(saga_id=saga.pk, budget=60) is True

    assert [(name, atomic) for name, atomic, _ in SEEN] == [
        ("call", False),  # the call: no transaction open
        ("record_call", True),  # its outcome: in the transaction that records it
        ("last", True),  # a local step: inside, as always
    ]
    assert SEEN[1][2]["answer"] == "answer-1"  # the record is told the call's result
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == SagaStatus.COMPLETED
    assert (saga.context["answer"], saga.context["recorded"]) == ("answer-1", "answer-1")
    assert _rows(saga) == [("call", "succeeded", 1), ("last", "succeeded", 1)]
    assert _effects(saga) == ["call", "last"]


@pytest.mark.django_db(transaction=True)
def test_a_remote_compensation_runs_outside_any_transaction_too() -> None:
    saga = _start(fail_last=True)
    assert saga_advance(saga_id=saga.pk, budget=60) is True

    assert [(name, atomic) for name, atomic, _ in SEEN] == [
        ("call", False),
        ("record_call", True),
        ("last", True),
        ("undo_call", False),
        ("record_undo", True),
    ]
    saga = Saga.objects.get(pk=saga.pk)
    assert (saga.status, saga.failure_reason) == (SagaStatus.FAILED, "last_refused")
    assert _effects(saga) == ["call", "undo_call"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_remote_call_is_retried_with_the_same_idempotency_key() -> None:
    saga = _start(call_fails=1)
    assert saga_advance(saga_id=saga.pk, budget=60) is True
    assert _rows(saga)[0] == ("call", "retrying", 1)
    assert _effects(saga) == []  # no record for a failed call

    time.sleep(0.05)
    assert saga_advance(saga_id=saga.pk, budget=60) is True
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == SagaStatus.COMPLETED
    assert _rows(saga) == [("call", "succeeded", 2), ("last", "succeeded", 1)]
    assert saga.context["recorded"] == "answer-2"


@pytest.mark.django_db(transaction=True)
def test_a_remote_outcome_is_not_recorded_without_the_lease() -> None:
    saga = _start(steal_lease=True)
    assert saga_advance(saga_id=saga.pk, budget=60) is True

    # The call happened (its idempotency key makes the next runner's repeat safe); its
    # record ran and rolled back with the runner's lost lease.
    assert [name for name, _, _ in SEEN] == ["call", "record_call"]
    assert _effects(saga) == []
    assert _rows(saga)[0] == ("call", "running", 1)
    assert Saga.objects.get(pk=saga.pk).lease_token == "another-runner"


@pytest.mark.django_db
def test_the_runner_refuses_a_remote_step_inside_a_transaction() -> None:
    # Inside the test's transaction: the remote call is not made, and the attempt stays
    # counted as running with the lease freed, for a runner outside any transaction.
    saga = _start()
    with pytest.raises(TransactionManagementError, match="remote step call"):
        saga_advance(saga_id=saga.pk, budget=60)
    assert SEEN == []
    assert _rows(saga)[0] == ("call", "running", 1)
    saga = Saga.objects.get(pk=saga.pk)
    assert (saga.lease_token, saga.lease_until) == ("", None)


def _start_demo(**script: Any) -> Saga:
    from tasks.saga import saga_start

    ledger = SagaLedger.objects.create(name=uuid.uuid4().hex[:8])
    return saga_start(
        kind=DEMO.kind,
        ref=f"ledger:{ledger.pk}",
        context={"ledger_id": ledger.pk, **script},
        publish=False,
    )


@pytest.mark.django_db
def test_a_short_retry_is_an_advance_message_that_waits_for_its_time() -> None:
    saga = _start_demo(transient={"charge": 1})
    before = time.time()
    assert saga_advance(saga_id=saga.pk, budget=60) is True
    [message] = OutboxMessage.objects.filter(task_name="tasks.saga_advance", args=[saga.pk])
    # Due after the step's backoff (at most 0.5 s for the demo saga), not at once.
    assert before <= message.kwargs["not_before"] <= time.time() + 0.5
    # The sweeper's fallback comes long after, should that message be lost.
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.wake_at is not None and saga.wake_at.timestamp() >= before + 30


@pytest.mark.live
def test_an_advance_message_waits_until_its_not_before(live_worker: LiveProcess) -> None:
    from config.celery import app

    saga = _start_demo()
    sent = time.monotonic()
    app.send_task("tasks.saga_advance", args=[saga.pk], kwargs={"not_before": time.time() + 2})
    time.sleep(1)
    assert Saga.objects.get(pk=saga.pk).status == SagaStatus.PENDING  # not before its time
    wait_for(
        lambda: Saga.objects.filter(pk=saga.pk, status=SagaStatus.COMPLETED).exists(),
        timeout=30,
        what="the saga to complete once its message was due",
    )
    assert time.monotonic() - sent >= 2
