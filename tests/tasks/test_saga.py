"""The saga orchestrator, driven through the "toolkit.demo" saga (tests/toolkit_app) by a real
worker: every step and compensation is counted as committed effect rows."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks.context import reset_request_id, set_request_id
from tasks.errors import IllegalTransition
from tasks.models import OutboxMessage
from tasks.models.saga import Saga, SagaStatus, SagaStep, StepStatus
from tasks.saga import (
    SAGA_MACHINE,
    STEP_MACHINE,
    NotCancellable,
    Step,
    StepFailed,
    define_saga,
    saga_advance,
    saga_cancel,
    saga_resume_compensation,
    saga_start,
    sagas_wake_due,
)
from tests.toolkit_app.models.saga import SagaEffect, SagaLedger, SagaSwitch
from tests.toolkit_app.tasks.saga import DEMO

from ..harness import LiveProcess, wait_for

S, T = SagaStatus, StepStatus
FORWARD_STEPS = [step.name for step in DEMO.steps]


# --- helpers -----------------------------------------------------------------------------


def _start(*, publish: bool = True, **script: Any) -> Saga:
    ledger = SagaLedger.objects.create(name=uuid.uuid4().hex[:8])
    return saga_start(
        kind="toolkit.demo",
        ref=f"ledger:{ledger.pk}",
        context={"ledger_id": ledger.pk, **script},
        publish=publish,
    )


def _switch() -> str:
    return SagaSwitch.objects.create(name=uuid.uuid4().hex).name


def _flip(name: str) -> None:
    SagaSwitch.objects.filter(name=name).update(on=True)


def _wait_status(saga: Saga, status: str, timeout: float = 30.0) -> Saga:
    return wait_for(
        lambda: Saga.objects.filter(pk=saga.pk, status=status).first(),
        timeout=timeout,
        what=f"saga {saga.pk} to be {status} (now {Saga.objects.get(pk=saga.pk).status})",
    )


def _wait_row(saga: Saga, name: str, status: str) -> SagaStep:
    return wait_for(
        lambda: SagaStep.objects.filter(saga=saga, name=name, status=status).first(),
        what=f"step {name} of saga {saga.pk} to be {status}",
    )


def _effects(saga: Saga) -> list[tuple[str, str]]:
    return list(SagaEffect.objects.filter(saga_id=saga.pk).values_list("step", "direction"))


def _rows(saga: Saga) -> list[tuple[str, str, str, int]]:
    return list(
        SagaStep.objects.filter(saga=saga)
        .order_by("id")
        .values_list("direction", "name", "status", "attempts")
    )


def _ledger(saga: Saga) -> SagaLedger:
    return SagaLedger.objects.get(pk=saga.context["ledger_id"])


FULL_EFFECTS = [("reserve", "forward"), ("charge", "forward"), ("confirm", "forward")]
UNDONE_EFFECTS = [
    ("reserve", "forward"),
    ("charge", "forward"),
    ("refund", "compensation"),
    ("release", "compensation"),
]


def _assert_finished_cleanly(saga: Saga) -> None:
    assert saga.finished_at is not None
    assert saga.wake_at is None
    assert saga.lease_token == ""
    assert saga.lease_until is None


# --- the state tables --------------------------------------------------------------------


SAGA_ALLOWED = {
    ("pending", "running"),
    ("pending", "compensating"),
    ("running", "completed"),
    ("running", "compensating"),
    ("compensating", "failed"),
    ("compensating", "cancelled"),
    ("compensating", "compensation_failed"),
    ("compensation_failed", "compensating"),
}
STEP_ALLOWED = {
    ("pending", "running"),
    ("pending", "skipped"),
    ("running", "running"),
    ("running", "succeeded"),
    ("running", "retrying"),
    ("running", "failed"),
    ("retrying", "running"),
    ("retrying", "failed"),
    ("failed", "pending"),
}


@pytest.mark.parametrize(
    ("machine", "states", "allowed"),
    [
        (SAGA_MACHINE, SagaStatus.values, SAGA_ALLOWED),
        (STEP_MACHINE, StepStatus.values, STEP_ALLOWED),
    ],
    ids=["saga", "step"],
)
def test_transition_tables_allow_exactly_the_listed_moves(
    machine: Any, states: list[str], allowed: set[tuple[str, str]]
) -> None:
    assert machine.states == set(states)
    for current in states:
        for target in states:
            if (current, target) in allowed:
                machine.check(current, target)
            else:
                with pytest.raises(IllegalTransition) as raised:
                    machine.check(current, target)
                assert (raised.value.current, raised.value.target) == (current, target)
    assert SAGA_MACHINE.terminal == {"completed", "failed", "cancelled"}


@pytest.mark.django_db
def test_conditional_update_and_locked_move_refuse_illegal_moves() -> None:
    saga = _start(publish=False)
    rows = Saga.objects.filter(pk=saga.pk)
    # Legal in the table, but the row is not in the expected state: nothing moves.
    with pytest.raises(IllegalTransition) as raised:
        SAGA_MACHINE.update(rows, current=S.RUNNING, target=S.COMPLETED)
    assert raised.value.current == "pending"
    assert SAGA_MACHINE.update(rows, current=S.RUNNING, target=S.COMPLETED, strict=False) == 0
    # Illegal in the table: refused before any SQL.
    with pytest.raises(IllegalTransition):
        SAGA_MACHINE.update(rows, current=S.PENDING, target=S.COMPLETED)
    assert SAGA_MACHINE.update(rows, current=S.PENDING, target=S.RUNNING) == 1
    locked = Saga.objects.select_for_update().get(pk=saga.pk)
    with pytest.raises(IllegalTransition):
        SAGA_MACHINE.move(locked, S.CANCELLED)
    assert Saga.objects.get(pk=saga.pk).status == "running"
    # Services go through the same tables.
    with pytest.raises(IllegalTransition):
        saga_resume_compensation(saga_id=saga.pk)


def test_definitions_are_checked() -> None:
    def noop(ctx: Any) -> None:
        return None

    with pytest.raises(ValueError, match="unique"):
        define_saga("toolkit.bad", steps=[Step("a", forward=noop), Step("a", forward=noop)])
    with pytest.raises(ValueError, match="already defined"):
        define_saga("toolkit.demo", steps=[Step("other", forward=noop)])
    assert Step("a", forward=noop, compensate=noop).compensate_name == "undo_a"


@pytest.mark.django_db
def test_one_saga_per_ref() -> None:
    first = _start(publish=False)
    again = saga_start(kind="toolkit.demo", ref=first.ref, context={}, publish=False)
    assert again.pk == first.pk
    assert Saga.objects.filter(ref=first.ref).count() == 1
    assert SagaStep.objects.filter(saga=first).count() == len(FORWARD_STEPS)


# --- the live flows ----------------------------------------------------------------------


@pytest.mark.live
def test_happy_path_runs_each_step_once_in_order(live_worker: LiveProcess) -> None:
    request_id = f"saga-{uuid.uuid4().hex}"
    token = set_request_id(request_id)
    try:
        saga = _start(transient={"reserve": 2})
    finally:
        reset_request_id(token)
    saga = _wait_status(saga, S.COMPLETED)

    assert _rows(saga) == [
        ("forward", "reserve", "succeeded", 3),
        ("forward", "charge", "succeeded", 1),
        ("forward", "confirm", "succeeded", 1),
    ]
    assert _effects(saga) == FULL_EFFECTS
    assert SagaEffect.objects.get(saga_id=saga.pk, step="reserve").attempt == 3
    ledger = _ledger(saga)
    assert (ledger.reserved, ledger.charged, ledger.confirmed) == (1, 1, True)
    # Each step's returned dict was merged into the context.
    assert saga.context["reserve_attempts"] == 3
    assert saga.context["confirm_attempts"] == 1
    assert saga.failure_reason == ""
    _assert_finished_cleanly(saga)
    # The request id that started the saga follows it into every turn (retries included).
    assert saga.request_id == request_id
    retry_lines = [
        ln
        for ln in live_worker.log_text().splitlines()
        if f"saga toolkit.demo #{saga.pk} reserve attempt" in ln
    ]
    assert len(retry_lines) == 2
    assert all(f"rid={request_id}" in ln for ln in retry_lines)


@pytest.mark.live
def test_step_failure_compensates_completed_steps_in_reverse(live_worker: LiveProcess) -> None:
    saga = _wait_status(_start(fail_at="confirm"), S.FAILED)

    assert saga.failure_reason == "confirm_refused"
    assert "confirm" in saga.error
    assert _rows(saga) == [
        ("forward", "reserve", "succeeded", 1),
        ("forward", "charge", "succeeded", 1),
        ("forward", "confirm", "failed", 1),
        ("compensation", "refund", "succeeded", 1),
        ("compensation", "release", "succeeded", 1),
    ]
    assert _effects(saga) == UNDONE_EFFECTS
    ledger = _ledger(saga)
    assert (ledger.reserved, ledger.charged, ledger.confirmed) == (0, 0, False)
    _assert_finished_cleanly(saga)


@pytest.mark.live
def test_retries_run_out_into_a_failure_with_the_step_reason(live_worker: LiveProcess) -> None:
    saga = _wait_status(_start(transient={"charge": 99}), S.FAILED)

    assert saga.failure_reason == "charge_retries_exhausted"
    assert _rows(saga) == [
        ("forward", "reserve", "succeeded", 1),
        ("forward", "charge", "failed", 4),  # max_attempts
        ("forward", "confirm", "skipped", 0),
        ("compensation", "release", "succeeded", 1),
    ]
    assert _effects(saga) == [("reserve", "forward"), ("release", "compensation")]


@pytest.mark.live
def test_an_unexpected_error_fails_the_step_at_once(live_worker: LiveProcess) -> None:
    saga = _wait_status(_start(bug_at="charge"), S.FAILED)

    assert saga.failure_reason == "charge_failed"
    assert "KeyError" in saga.error
    assert _rows(saga)[1] == ("forward", "charge", "failed", 1)
    assert _effects(saga) == [("reserve", "forward"), ("release", "compensation")]


def _park(switch: str) -> Saga:
    """A saga whose last compensation (release) keeps failing until `switch` is on."""
    saga = _start(fail_at="confirm", compensation_fails={"release": switch})
    saga = _wait_status(saga, S.COMPENSATION_FAILED)
    assert saga.needs_attention is True
    assert saga.failure_reason == "confirm_refused"
    assert "release" in saga.error and f"switch {switch} is off" in saga.error
    assert saga.wake_at is None
    assert _rows(saga)[-1] == ("compensation", "release", "failed", 3)
    assert _effects(saga) == UNDONE_EFFECTS[:3]
    return saga


def _assert_compensated_once(saga: Saga) -> None:
    saga = _wait_status(saga, S.FAILED)
    assert saga.needs_attention is False
    assert saga.failure_reason == "confirm_refused"
    assert _effects(saga) == UNDONE_EFFECTS  # refund and release exactly once each
    assert _rows(saga)[3:] == [
        ("compensation", "refund", "succeeded", 1),
        ("compensation", "release", "succeeded", 1),  # a fresh round of attempts
    ]
    ledger = _ledger(saga)
    assert (ledger.reserved, ledger.charged) == (0, 0)
    _assert_finished_cleanly(saga)


@pytest.mark.live
def test_failing_compensation_parks_the_saga_and_resume_finishes_it(
    live_worker: LiveProcess,
) -> None:
    switch = _switch()
    saga = _park(switch)
    line = wait_for(
        lambda: next(
            (
                ln
                for ln in live_worker.log_text().splitlines()
                if f"#{saga.pk} ref={saga.ref} parked in compensation_failed" in ln
            ),
            None,
        ),
        what="the worker's error line",
    )
    assert " ERROR tasks.saga " in line

    # Resuming while the compensation still fails parks it again, nothing else changes.
    saga_resume_compensation(saga_id=saga.pk)
    saga = _wait_status(saga, S.COMPENSATION_FAILED)
    assert _effects(saga) == UNDONE_EFFECTS[:3]

    _flip(switch)
    resumed = saga_resume_compensation(saga_id=saga.pk)
    assert (resumed.status, resumed.needs_attention) == (S.COMPENSATING, False)
    _assert_compensated_once(saga)
    with pytest.raises(IllegalTransition):
        saga_resume_compensation(saga_id=saga.pk)


@pytest.mark.live
def test_admin_shows_parked_sagas_and_retries_their_compensation(
    live_worker: LiveProcess, client: Client
) -> None:
    admin_user = get_user_model().objects.create_superuser(
        f"admin-{uuid.uuid4().hex[:8]}", "admin@example.com", "pw"
    )
    client.force_login(admin_user)
    switch = _switch()
    saga = _park(switch)

    changelist = reverse("admin:tasks_saga_changelist")
    listing = client.get(changelist, {"needs_attention__exact": "1"})
    assert listing.status_code == 200
    assert "needs attention" in listing.content.decode()
    detail = client.get(reverse("admin:tasks_saga_change", args=[saga.pk]))
    assert detail.status_code == 200
    assert "refund" in detail.content.decode() and "release" in detail.content.decode()

    _flip(switch)
    response = client.post(
        changelist,
        {"action": "retry_compensation", "_selected_action": [str(saga.pk)], "index": 0},
    )
    assert response.status_code == 302
    _assert_compensated_once(saga)


@pytest.mark.live
def test_two_concurrent_advances_never_run_one_saga_twice(live_worker: LiveProcess) -> None:
    switch = _switch()
    # Not published: only the two threads below can run the first step.
    saga = _start(publish=False, hold={"reserve": switch})
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def advance() -> None:
        try:
            barrier.wait()
            results.append(saga_advance(saga_id=saga.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=advance) for _ in range(2)]
    for thread in threads:
        thread.start()
    # The winner is held inside the step until the switch flips, so the one that returns
    # first must be the one that found the lease taken.
    wait_for(lambda: len(results) == 1, what="the loser to return")
    assert results == [False]
    assert _rows(saga)[0] == ("forward", "reserve", "running", 1)
    _flip(switch)
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [False, True]

    saga = _wait_status(saga, S.COMPLETED)  # the winner enqueued the next turn
    assert _effects(saga) == FULL_EFFECTS
    assert [row[3] for row in _rows(saga)] == [1, 1, 1]


@pytest.mark.live
def test_a_runner_that_outlived_its_lease_rolls_its_step_back(live_worker: LiveProcess) -> None:
    switch = _switch()
    saga = _start(publish=False, hold={"reserve": switch})
    results: list[bool] = []

    def advance() -> None:
        try:
            results.append(saga_advance(saga_id=saga.pk))
        finally:
            connections.close_all()

    slow = threading.Thread(target=advance)
    slow.start()
    _wait_row(saga, "reserve", T.RUNNING)
    # Time passes beyond the lease (a runner stuck past its hard limit): a new runner may
    # take over, and counts the first attempt as lost.
    Saga.objects.filter(pk=saga.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    second = threading.Thread(target=advance)
    second.start()
    wait_for(lambda: SagaStep.objects.filter(saga=saga, name="reserve", attempts=2).exists())
    _flip(switch)  # both runners now finish the step; only the lease holder may record it
    for thread in (slow, second):
        thread.join(timeout=30)
    assert results == [True, True]

    saga = _wait_status(saga, S.COMPLETED)
    assert _effects(saga) == FULL_EFFECTS
    assert SagaEffect.objects.get(saga_id=saga.pk, step="reserve").attempt == 2
    assert _ledger(saga).reserved == 1
    assert _rows(saga)[0] == ("forward", "reserve", "succeeded", 2)


@pytest.mark.live
def test_duplicate_advance_messages_on_two_pool_processes_run_each_step_once(
    live_worker: LiveProcess,
) -> None:
    from config.celery import app

    saga = _start(publish=False, sleep_ms={"reserve": 200, "charge": 200})
    for _ in range(8):
        app.send_task("tasks.saga_advance", args=[saga.pk])
    saga = _wait_status(saga, S.COMPLETED)
    assert _effects(saga) == FULL_EFFECTS
    assert [row[3] for row in _rows(saga)] == [1, 1, 1]


@pytest.mark.live
def test_cancel_while_a_step_runs_compensates_and_ends_cancelled(
    live_worker: LiveProcess,
) -> None:
    switch = _switch()
    saga = _start(hold={"charge": switch})
    _wait_row(saga, "charge", T.RUNNING)

    # The runner holds the lease: the cancel is recorded and the runner acts on it.
    cancelled = saga_cancel(saga_id=saga.pk, reason="customer_cancelled")
    assert (cancelled.status, cancelled.cancel_requested) == (S.RUNNING, True)
    assert saga_cancel(saga_id=saga.pk, reason="again").pk == saga.pk  # idempotent
    _flip(switch)

    saga = _wait_status(saga, S.CANCELLED)
    assert saga.failure_reason == "customer_cancelled"
    assert _effects(saga) == UNDONE_EFFECTS
    assert _rows(saga)[2] == ("forward", "confirm", "skipped", 0)
    _assert_finished_cleanly(saga)


@pytest.mark.live
def test_cancel_of_a_saga_that_has_not_run_ends_it_at_once(live_worker: LiveProcess) -> None:
    saga = _start(publish=False)
    cancelled = saga_cancel(saga_id=saga.pk, reason="customer_cancelled")
    assert cancelled.status == S.CANCELLED
    assert [row[2] for row in _rows(saga)] == ["skipped"] * 3
    assert saga_cancel(saga_id=saga.pk, reason="again").status == S.CANCELLED
    assert saga_advance(saga_id=saga.pk) is False
    assert sagas_wake_due() == 0
    assert _effects(saga) == []


@pytest.mark.live
def test_cancel_past_the_point_of_no_return_is_refused(live_worker: LiveProcess) -> None:
    switch = _switch()
    saga = _start(hold={"confirm": switch})
    _wait_row(saga, "confirm", T.RUNNING)

    with pytest.raises(NotCancellable) as raised:
        saga_cancel(saga_id=saga.pk, reason="too_late")
    assert isinstance(raised.value, IllegalTransition)
    assert raised.value.step == "confirm"
    assert Saga.objects.get(pk=saga.pk).cancel_requested is False

    _flip(switch)
    saga = _wait_status(saga, S.COMPLETED)
    assert _effects(saga) == FULL_EFFECTS
    with pytest.raises(IllegalTransition):
        saga_cancel(saga_id=saga.pk, reason="too_late")


@pytest.mark.live
def test_sweeper_runs_a_saga_whose_advance_message_was_lost(live_worker: LiveProcess) -> None:
    saga = _start(publish=False)  # committed, never published: as if the message was lost
    assert sagas_wake_due() == 1
    assert sagas_wake_due() == 0  # its wake_at moved on: not sent again at the next sweep
    saga = _wait_status(saga, S.COMPLETED)
    assert _effects(saga) == FULL_EFFECTS


def _as_if_runner_died(saga: Saga, *, attempts: int, lease_left: float) -> None:
    """The rows a runner leaves when it dies after committing an attempt as running."""
    now = timezone.now()
    Saga.objects.filter(pk=saga.pk).update(
        status=S.RUNNING,
        lease_token="dead-runner",
        lease_until=now + timedelta(seconds=lease_left),
        wake_at=now + timedelta(seconds=lease_left),
    )
    SagaStep.objects.filter(saga=saga, name="reserve").update(
        status=T.RUNNING, attempts=attempts, started_at=now
    )


@pytest.mark.live
def test_sweeper_resumes_a_step_whose_runner_died(live_worker: LiveProcess) -> None:
    saga = _start(publish=False)
    _as_if_runner_died(saga, attempts=1, lease_left=60)
    assert sagas_wake_due() == 0  # the lease is still held: the runner may be alive
    assert saga_advance(saga_id=saga.pk) is False

    _as_if_runner_died(saga, attempts=1, lease_left=-1)
    assert sagas_wake_due() == 1
    saga = _wait_status(saga, S.COMPLETED)
    assert _rows(saga)[0] == ("forward", "reserve", "succeeded", 2)  # the lost attempt counts
    assert _effects(saga) == FULL_EFFECTS


@pytest.mark.live
def test_a_runner_lost_on_the_last_attempt_fails_the_step(live_worker: LiveProcess) -> None:
    saga = _start(publish=False)
    _as_if_runner_died(saga, attempts=DEMO.steps[0].max_attempts, lease_left=-1)
    assert sagas_wake_due() == 1
    saga = _wait_status(saga, S.FAILED)
    assert saga.failure_reason == "reserve_retries_exhausted"
    assert _rows(saga) == [
        ("forward", "reserve", "failed", 4),
        ("forward", "charge", "skipped", 0),
        ("forward", "confirm", "skipped", 0),
    ]
    assert _effects(saga) == []


@pytest.mark.live
def test_worker_killed_mid_step_rolls_the_attempt_back_and_the_step_runs_again(
    live_worker: LiveProcess,
) -> None:
    switch = _switch()
    saga = _start(hold={"charge": switch})
    _wait_row(saga, "charge", T.RUNNING)
    live_worker.kill()  # SIGKILL while the step's transaction is open
    live_worker.start()
    assert _effects(saga) == [("reserve", "forward")]  # the killed attempt left nothing

    # The dead runner's lease would expire after the step's hard time limit; move the clock
    # of the lease instead of waiting for it.
    past = timezone.now() - timedelta(seconds=1)
    Saga.objects.filter(pk=saga.pk).update(lease_until=past, wake_at=past)
    _flip(switch)
    assert sagas_wake_due() == 1
    saga = _wait_status(saga, S.COMPLETED)
    assert _rows(saga)[1] == ("forward", "charge", "succeeded", 2)
    assert _effects(saga) == FULL_EFFECTS


# --- turns: several steps per turn --------------------------------------------------------


# These drive turns from the test process inside the test's transaction: nothing commits,
# so no message reaches the session's live worker and the states between turns hold still.


def _advances_enqueued(saga: Saga) -> int:
    """How many `tasks.saga_advance` messages the saga's turns asked for (outbox rows)."""
    return OutboxMessage.objects.filter(task_name="tasks.saga_advance", args=[saga.pk]).count()


@pytest.mark.django_db
def test_one_turn_runs_every_step_while_they_succeed() -> None:
    saga = _start(publish=False)

    assert saga_advance(saga_id=saga.pk, budget=60) is True

    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.COMPLETED
    assert _rows(saga) == [("forward", name, "succeeded", 1) for name in FORWARD_STEPS]
    assert _effects(saga) == FULL_EFFECTS
    assert saga.context["confirm_attempts"] == 1  # each step's result merged as before
    assert _advances_enqueued(saga) == 0  # no message between steps
    _assert_finished_cleanly(saga)
    assert saga_advance(saga_id=saga.pk) is False  # finished: nothing to take


@pytest.mark.django_db
def test_a_failure_compensates_in_the_same_turn() -> None:
    saga = _start(publish=False, fail_at="confirm")

    assert saga_advance(saga_id=saga.pk, budget=60) is True

    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.FAILED
    assert saga.failure_reason == "confirm_refused"
    assert _effects(saga) == UNDONE_EFFECTS
    assert _advances_enqueued(saga) == 0
    _assert_finished_cleanly(saga)


@pytest.mark.django_db
def test_a_spent_budget_hands_the_saga_to_a_new_turn() -> None:
    saga = _start(publish=False)

    # Budget 0: the first step of a turn always runs, no second one starts.
    assert saga_advance(saga_id=saga.pk, budget=0) is True
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.RUNNING
    assert [row[2:] for row in _rows(saga)] == [("succeeded", 1), ("pending", 0), ("pending", 0)]
    assert (saga.lease_token, saga.lease_until) == ("", None)  # released for the next turn
    assert saga.wake_at is not None  # the sweeper's fallback should that message be lost
    assert _advances_enqueued(saga) == 1

    assert saga_advance(saga_id=saga.pk, budget=0) is True
    assert _advances_enqueued(saga) == 2
    # The last step's turn also finishes the saga: no empty turn after it.
    assert saga_advance(saga_id=saga.pk, budget=0) is True
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.COMPLETED
    assert _advances_enqueued(saga) == 2
    assert _effects(saga) == FULL_EFFECTS
    _assert_finished_cleanly(saga)


@pytest.mark.django_db
def test_a_retry_ends_the_turn_and_waits_for_its_backoff() -> None:
    saga = _start(publish=False, transient={"charge": 1})

    assert saga_advance(saga_id=saga.pk, budget=60) is True
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.RUNNING
    assert [row[2:] for row in _rows(saga)] == [("succeeded", 1), ("retrying", 1), ("pending", 0)]
    assert saga.lease_token == ""  # the retry is a new turn, after its backoff

    assert saga_advance(saga_id=saga.pk, budget=60) is True
    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.COMPLETED
    assert [row[3] for row in _rows(saga)] == [1, 2, 1]
    assert _effects(saga) == FULL_EFFECTS


@pytest.mark.live
def test_cancel_during_a_multi_step_turn_stops_it_after_the_running_step(
    live_worker: LiveProcess,
) -> None:
    switch = _switch()
    saga = _start(hold={"charge": switch})
    _wait_row(saga, "charge", T.RUNNING)
    assert _advances_enqueued(saga) == 1  # reserve and charge in the first message's turn

    assert saga_cancel(saga_id=saga.pk, reason="customer_cancelled").status == S.RUNNING
    _flip(switch)

    # charge succeeds, then the same runner sees the flag instead of starting confirm.
    saga = _wait_status(saga, S.CANCELLED)
    assert _effects(saga) == UNDONE_EFFECTS
    assert _rows(saga)[2] == ("forward", "confirm", "skipped", 0)
    _assert_finished_cleanly(saga)


@pytest.mark.live
def test_worker_killed_mid_turn_resumes_at_the_step_it_was_running(
    live_worker: LiveProcess,
) -> None:
    switch = _switch()
    saga = _start(hold={"charge": switch})
    _wait_row(saga, "charge", T.RUNNING)
    # One turn got here: reserve's success and charge's start were committed together.
    assert _advances_enqueued(saga) == 1
    assert _rows(saga)[:2] == [
        ("forward", "reserve", "succeeded", 1),
        ("forward", "charge", "running", 1),
    ]
    live_worker.kill()  # SIGKILL in the middle of the turn, charge's transaction open
    live_worker.start()
    assert _effects(saga) == [("reserve", "forward")]

    past = timezone.now() - timedelta(seconds=1)
    Saga.objects.filter(pk=saga.pk).update(lease_until=past, wake_at=past)
    _flip(switch)
    assert sagas_wake_due() == 1
    saga = _wait_status(saga, S.COMPLETED)
    # reserve is not run again; charge's lost attempt counts; confirm ran once.
    assert _rows(saga) == [
        ("forward", "reserve", "succeeded", 1),
        ("forward", "charge", "succeeded", 2),
        ("forward", "confirm", "succeeded", 1),
    ]
    assert _effects(saga) == FULL_EFFECTS
    assert _ledger(saga).reserved == 1


# --- Steps skipped from the start ---------------------------------------------------------


def _note(name: str) -> Any:
    def run(ctx: Any) -> dict[str, Any]:
        if ctx.context.get("fail") == name:
            raise StepFailed(f"{name}_refused")
        return {f"ran_{name}": True}

    return run


SKIPPABLE = define_saga(
    "toolkit.skippable",
    steps=[
        Step(
            "maybe",
            forward=_note("maybe"),
            compensate=_note("undo_maybe"),
            compensate_name="undo_maybe",
            skip_if=lambda context: bool(context.get("skip")),
        ),
        Step("always", forward=_note("always"), compensate=_note("undo_always")),
        Step("last", forward=_note("last")),
    ],
)


def _start_skippable(**context: Any) -> Saga:
    return saga_start(
        kind="toolkit.skippable", ref=uuid.uuid4().hex, context=context, publish=False
    )


@pytest.mark.django_db
def test_a_step_skipped_at_start_never_runs_and_the_saga_completes() -> None:
    saga = _start_skippable(skip=True)
    assert _rows(saga)[0] == ("forward", "maybe", "skipped", 0)

    assert saga_advance(saga_id=saga.pk, budget=60) is True

    saga = Saga.objects.get(pk=saga.pk)
    assert saga.status == S.COMPLETED
    assert _rows(saga) == [
        ("forward", "maybe", "skipped", 0),
        ("forward", "always", "succeeded", 1),
        ("forward", "last", "succeeded", 1),
    ]
    assert "ran_maybe" not in saga.context and saga.context["ran_last"] is True


@pytest.mark.django_db
def test_a_skipped_step_is_not_compensated_and_an_unskipped_one_runs() -> None:
    skipped = _start_skippable(skip=True, fail="last")
    ran = _start_skippable(skip=False, fail="last")

    for saga in (skipped, ran):
        assert saga_advance(saga_id=saga.pk, budget=60) is True

    skipped, ran = Saga.objects.get(pk=skipped.pk), Saga.objects.get(pk=ran.pk)
    assert skipped.status == ran.status == S.FAILED
    assert [r[1:3] for r in _rows(skipped) if r[0] == "compensation"] == [
        ("undo_always", "succeeded")
    ]
    assert [r[1:3] for r in _rows(ran) if r[0] == "compensation"] == [
        ("undo_always", "succeeded"),
        ("undo_maybe", "succeeded"),
    ]
    assert ran.context["ran_maybe"] is True
