"""Idempotent consumers: the same message, delivered twice or twice at once, has one
effect."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import pytest
from django.db import connection, transaction

from config.celery import app as celery_app
from tasks.consumers import consume_once, current_message_id
from tasks.models import OutboxMessage, ProcessedMessage
from tasks.outbox import outbox_enqueue
from tests.toolkit_app.models import ProbeDelivery, ProbeEffect

from ..harness import LiveProcess, wait_for


@pytest.mark.django_db
def test_consume_once_says_yes_once() -> None:
    with transaction.atomic():
        assert consume_once(consumer="c1", message_id="m1") is True
    with transaction.atomic():
        assert consume_once(consumer="c1", message_id="m1") is False
        assert consume_once(consumer="c2", message_id="m1") is True  # per consumer
    assert ProcessedMessage.objects.count() == 2


@pytest.mark.django_db
def test_a_rolled_back_effect_leaves_the_message_unprocessed() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        assert consume_once(consumer="c", message_id="m") is True
        raise RuntimeError("the effect failed")
    with transaction.atomic():
        assert consume_once(consumer="c", message_id="m") is True


@pytest.mark.django_db(transaction=True)
def test_consume_once_refuses_to_run_outside_a_transaction() -> None:
    with pytest.raises(RuntimeError, match=r"transaction\.atomic"):
        consume_once(consumer="c", message_id="m")
    assert not ProcessedMessage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_wait_and_then_see_the_conflict() -> None:
    """Two transactions record the same message at once: the second blocks on the unique
    index until the first commits, then gets False."""
    first_in, first_may_commit = threading.Event(), threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = consume_once(consumer="c", message_id="dup")
                first_in.set()
                first_may_commit.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            with transaction.atomic():
                results["second"] = consume_once(consumer="c", message_id="dup")
        finally:
            connection.close()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_in.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    t2.join(0.5)
    assert t2.is_alive()  # waiting on the first transaction's uncommitted row
    first_may_commit.set()
    t1.join(10)
    t2.join(10)
    assert results == {"first": True, "second": False}


def test_current_message_id_prefers_the_logical_id() -> None:
    def task(**request: object) -> SimpleNamespace:
        return SimpleNamespace(request=SimpleNamespace(**request))

    assert current_message_id(task(id="abc")) == "abc"
    assert current_message_id(task(id="outbox-7", outbox_id=7)) == "outbox-7"
    assert current_message_id(task(id="outbox-9", outbox_id=9, message_id="outbox-7")) == (
        "outbox-7"
    )


# --- Live -------------------------------------------------------------------------------------
def _effects(token: str) -> int:
    return ProbeEffect.objects.filter(token=token).count()


def _deliveries(token: str) -> int:
    return ProbeDelivery.objects.filter(token=token).count()


def _processed_already(worker: LiveProcess, token: str) -> int:
    return sum(
        1
        for line in worker.log_text().splitlines()
        if f"token={token}" in line and "processed already" in line
    )


@pytest.mark.live
def test_the_same_message_delivered_twice_has_one_effect(live_worker: LiveProcess) -> None:
    token = f"twice-{uuid.uuid4().hex}"
    row = outbox_enqueue("toolkit.probe_effect", args=[token])
    wait_for(lambda: _effects(token) == 1, timeout=30, what="the first effect")
    # The broker hands the same message out again (as after a visibility timeout).
    celery_app.send_task(
        "toolkit.probe_effect",
        args=[token],
        task_id=f"outbox-{row.pk}",
        headers={"outbox_id": row.pk, "message_id": f"outbox-{row.pk}"},
    )
    wait_for(lambda: _processed_already(live_worker, token) == 1, timeout=30)
    assert (_deliveries(token), _effects(token)) == (2, 1)


@pytest.mark.live
def test_the_same_message_delivered_twice_at_once_has_one_effect(
    live_worker: LiveProcess,
) -> None:
    """Published twice at the same moment to a worker running two tasks at a time: both
    deliveries run together, the second waits on the first's uncommitted record."""
    token = f"at-once-{uuid.uuid4().hex}"
    message_id = f"dup-{uuid.uuid4().hex}"
    with celery_app.producer_or_acquire() as producer:
        for _ in range(2):
            celery_app.send_task(
                "toolkit.probe_effect",
                args=[token],
                kwargs={"hold_s": 1.0},
                headers={"message_id": message_id},
                producer=producer,
            )
    wait_for(lambda: _processed_already(live_worker, token) == 1, timeout=30)
    assert (_deliveries(token), _effects(token)) == (2, 1)
    deliveries = list(ProbeDelivery.objects.filter(token=token))
    assert {d.message_id for d in deliveries} == {message_id}
    assert len({d.task_id for d in deliveries}) == 2  # two messages, one logical id
    assert ProcessedMessage.objects.filter(message_id=message_id).count() == 1
    assert not OutboxMessage.objects.filter(done_at__isnull=True).exists()
