"""Transactional outbox: published after commit, in one batch per transaction, never twice
for nothing and never lost (crash before the relay, Redis losing its data)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import signals
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from config.celery import app as celery_app
from config.devservices import PrivateRedis
from tasks.models import OutboxMessage, ProcessedMessage
from tasks.outbox import (
    outbox_broker_epoch,
    outbox_confirm,
    outbox_enqueue,
    outbox_prune,
    outbox_sweep,
)
from tests.toolkit_app.models import ProbeDelivery, ProbeEffect

from ..harness import LiveProcess, wait_for

NOOP = "toolkit.probe_noop"
EFFECT = "toolkit.probe_effect"
NOW = timedelta(0)


@pytest.fixture
def published() -> Any:
    """Headers of every task message this process publishes during the test (Celery's own
    after_task_publish signal)."""
    seen: list[dict[str, Any]] = []

    def _seen(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    signals.after_task_publish.connect(_seen, weak=False)
    try:
        yield seen
    finally:
        signals.after_task_publish.disconnect(_seen)


def _outbox_ids(seen: list[dict[str, Any]]) -> list[int]:
    return [h["outbox_id"] for h in seen if "outbox_id" in h]


# --- Enqueue and relay ----------------------------------------------------------------------
@pytest.mark.django_db
def test_rows_of_one_transaction_are_published_in_one_batch(
    django_capture_on_commit_callbacks: Callable[..., Any],
    published: list[dict[str, Any]],
) -> None:
    outbox_broker_epoch()  # the epoch exists: the relay's queries below are the steady state
    with django_capture_on_commit_callbacks() as hooks:
        rows = [outbox_enqueue(NOOP, args=[i], kwargs={"n": i}) for i in range(20)]
    assert len(hooks) == 1  # one hook for the whole transaction, not one per row
    with CaptureQueriesContext(connection) as queries:
        hooks[0]()
    # One SELECT and one UPDATE (mark them sent), for 20 rows. Called by hand rather than
    # by Django's commit, the hook cannot tell that no savepoint rolled back: it asks which
    # of its rows exist.
    outbox_sql = [q["sql"] for q in queries.captured_queries if "tasks_outboxmessage" in q["sql"]]
    assert [sql.split()[0] for sql in outbox_sql] == ["SELECT", "UPDATE"]
    assert sorted(_outbox_ids(published)) == [row.pk for row in rows]
    sent = OutboxMessage.objects.filter(pk__in=[row.pk for row in rows])
    assert sent.filter(sent_at__isnull=False, publish_count=1).count() == 20


@pytest.mark.django_db
def test_published_message_carries_its_logical_id_and_request_id(
    django_capture_on_commit_callbacks: Callable[..., Any],
    published: list[dict[str, Any]],
) -> None:
    from tasks.context import reset_request_id, set_request_id

    token = set_request_id("rid-outbox-1")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            row = outbox_enqueue(NOOP, args=[1], queue="high")
    finally:
        reset_request_id(token)
    assert row.request_id == "rid-outbox-1"
    (headers,) = published
    assert headers["id"] == f"outbox-{row.pk}"
    assert headers["outbox_id"] == row.pk
    assert headers["message_id"] == f"outbox-{row.pk}"
    assert headers["request_id"] == "rid-outbox-1"


@pytest.mark.django_db
def test_rollback_publishes_nothing(
    django_capture_on_commit_callbacks: Callable[..., Any], published: list[dict[str, Any]]
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        kept = outbox_enqueue(NOOP, args=["kept"])
        try:
            with transaction.atomic():
                dropped = outbox_enqueue(NOOP, args=["dropped"])
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        after = outbox_enqueue(NOOP, args=["after"])
    assert not OutboxMessage.objects.filter(pk=dropped.pk).exists()
    assert sorted(_outbox_ids(published)) == [kept.pk, after.pk]


def _outbox_statements(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"].split()[0] for q in queries.captured_queries if "tasks_outboxmessage" in q["sql"]
    ]


@pytest.mark.django_db(transaction=True)
def test_a_real_commit_relays_without_asking_which_rows_exist(
    published: list[dict[str, Any]],
) -> None:
    """No savepoint rolled back: every row of the batch committed, so the relay goes
    straight to publishing and marks them sent with one UPDATE."""
    outbox_broker_epoch()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        rows = [outbox_enqueue(NOOP, args=[i]) for i in range(5)]
        with transaction.atomic():  # a savepoint released, not rolled back
            rows.append(outbox_enqueue(NOOP, args=[5]))
    assert _outbox_statements(queries) == ["INSERT"] * 6 + ["UPDATE"]
    assert sorted(_outbox_ids(published)) == [row.pk for row in rows]
    sent = OutboxMessage.objects.filter(pk__in=[row.pk for row in rows], sent_at__isnull=False)
    assert sent.count() == 6


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("row_after_rollback", [False, True])
def test_a_real_commit_after_a_savepoint_rollback_publishes_only_what_exists(
    published: list[dict[str, Any]], row_after_rollback: bool
) -> None:
    """A savepoint rolled back after the batch's first row, with or without rows added
    after it: the relay notices, asks, and publishes only the rows that exist."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        kept = [outbox_enqueue(NOOP, args=["kept"])]
        try:
            with transaction.atomic():
                dropped = outbox_enqueue(NOOP, args=["dropped"])
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        if row_after_rollback:
            kept.append(outbox_enqueue(NOOP, args=["after"]))
    assert not OutboxMessage.objects.filter(pk=dropped.pk).exists()
    assert sorted(_outbox_ids(published)) == [row.pk for row in kept]
    assert _outbox_statements(queries)[-2:] == ["SELECT", "UPDATE"]


@pytest.mark.django_db
def test_dedupe_key_returns_the_existing_row(
    django_capture_on_commit_callbacks: Callable[..., Any], published: list[dict[str, Any]]
) -> None:
    key = f"k-{uuid.uuid4().hex}"
    with django_capture_on_commit_callbacks(execute=True):
        first = outbox_enqueue(NOOP, args=[1], key=key)
        second = outbox_enqueue(NOOP, args=[2], key=key)
    assert second.pk == first.pk
    assert second.args == [1]  # the first one's
    assert OutboxMessage.objects.filter(key=key).count() == 1
    assert _outbox_ids(published) == [first.pk]
    with django_capture_on_commit_callbacks(execute=True):
        third = outbox_enqueue(NOOP, args=[3], key=key)  # a later transaction
    assert third.pk == first.pk
    assert _outbox_ids(published) == [first.pk]  # not published again
    # Rows without a key never collide.
    with django_capture_on_commit_callbacks(execute=True):
        a, b = outbox_enqueue(NOOP), outbox_enqueue(NOOP)
    assert a.pk != b.pk


@pytest.mark.django_db
def test_bad_input_is_refused_in_the_callers_transaction() -> None:
    with pytest.raises(ValueError, match="unknown queue"):
        outbox_enqueue(NOOP, queue="nowhere")
    with pytest.raises(TypeError):
        outbox_enqueue(NOOP, args=[object()])
    assert not OutboxMessage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_autocommit_publishes_at_once(published: list[dict[str, Any]]) -> None:
    assert connection.get_autocommit()
    row = outbox_enqueue(NOOP, args=["auto"])
    assert _outbox_ids(published) == [row.pk]
    row.refresh_from_db()
    assert row.sent_at is not None


# --- Sweeper -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_sweeper_publishes_unsent_rows_once_they_are_old_enough(
    published: list[dict[str, Any]],
) -> None:
    row = OutboxMessage.objects.create(task_name=NOOP, args=[1])  # committed, never relayed
    assert outbox_sweep() == 0  # younger than OUTBOX_SWEEP_UNSENT_AFTER_S: the relay's
    assert outbox_sweep(unsent_after=NOW) == 1
    assert _outbox_ids(published) == [row.pk]
    row.refresh_from_db()
    assert row.sent_at is not None
    assert row.publish_count == 1
    assert outbox_sweep(unsent_after=NOW) == 0  # sent in the current epoch: left alone


@pytest.mark.django_db
def test_sweeper_republishes_in_flight_rows_of_an_ended_broker_epoch(
    published: list[dict[str, Any]],
) -> None:
    epoch = outbox_broker_epoch()
    assert epoch > 0
    old = OutboxMessage.objects.create(
        task_name=NOOP, sent_at=Now(), broker_epoch=epoch - 1, publish_count=1
    )
    current = OutboxMessage.objects.create(
        task_name=NOOP, sent_at=Now(), broker_epoch=epoch, publish_count=1
    )
    done = OutboxMessage.objects.create(
        task_name=NOOP, sent_at=Now(), broker_epoch=epoch - 1, done_at=Now(), publish_count=1
    )
    assert outbox_sweep() == 1
    assert _outbox_ids(published) == [old.pk]
    old.refresh_from_db()
    assert (old.broker_epoch, old.publish_count) == (epoch, 2)
    current.refresh_from_db()
    done.refresh_from_db()
    assert current.publish_count == done.publish_count == 1
    # The long net: in flight for longer than the unconfirmed timeout.
    assert outbox_sweep(unconfirmed_after=NOW) == 2
    assert sorted(_outbox_ids(published)[1:]) == sorted([old.pk, current.pk])


@pytest.mark.django_db
def test_epoch_after_a_loss_is_above_every_stamp_in_flight(private_redis: PrivateRedis) -> None:
    epoch = outbox_broker_epoch()
    far = OutboxMessage.objects.create(
        task_name=NOOP, sent_at=Now(), broker_epoch=epoch + 1000, publish_count=1
    )
    redis.Redis.from_url(private_redis.url).delete("surge:outbox:broker-epoch")  # data lost
    new_epoch = outbox_broker_epoch()
    assert new_epoch > far.broker_epoch
    redis.Redis.from_url(private_redis.url).delete("surge:outbox:broker-epoch")
    far.delete()
    assert outbox_broker_epoch() > new_epoch  # the sequence moved past it too


@pytest.mark.django_db(transaction=True)
def test_sweepers_skip_rows_another_sweeper_holds(published: list[dict[str, Any]]) -> None:
    rows = [OutboxMessage.objects.create(task_name=NOOP, args=[i]) for i in range(3)]
    locked, release = threading.Event(), threading.Event()

    def hold_first_row() -> None:
        try:
            with transaction.atomic():
                OutboxMessage.objects.select_for_update().get(pk=rows[0].pk)
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_first_row)
    holder.start()
    try:
        assert locked.wait(10)
        # Does not wait for the held row: takes the others.
        assert outbox_sweep(unsent_after=NOW) == 2
        assert sorted(_outbox_ids(published)) == [rows[1].pk, rows[2].pk]
    finally:
        release.set()
        holder.join(10)
    assert outbox_sweep(unsent_after=NOW) == 1
    assert sorted(_outbox_ids(published)) == sorted(row.pk for row in rows)


@pytest.mark.django_db
def test_a_row_that_cannot_be_published_becomes_a_dead_letter() -> None:
    from tasks.models import DeadLetter

    row = OutboxMessage.objects.create(task_name=NOOP, args={"not": "a list"}, queue="nowhere")
    assert outbox_sweep(unsent_after=NOW) == 1
    row.refresh_from_db()
    assert row.done_at is not None and row.sent_at is None
    dead = DeadLetter.objects.get(task_id=f"outbox-{row.pk}")
    assert dead.reason == "unpublishable"
    assert outbox_sweep(unsent_after=NOW) == 0  # no loop over it


@pytest.mark.django_db
def test_confirm_and_prune() -> None:
    row = OutboxMessage.objects.create(task_name=NOOP, sent_at=Now())
    assert outbox_confirm(task_id=f"outbox-{row.pk}") is True
    assert outbox_confirm(outbox_id=row.pk) is False  # once
    assert outbox_confirm(task_id="some-uuid") is False
    in_flight = OutboxMessage.objects.create(task_name=NOOP, sent_at=Now())
    ProcessedMessage.objects.create(consumer="c", message_id="m")
    assert outbox_prune(older_than=timedelta(days=1)) == 0  # nothing old enough
    assert outbox_prune(older_than=timedelta(0)) == 2  # the done row and the record
    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == [in_flight.pk]


# --- Live: the proofs -----------------------------------------------------------------------
def _effects(token: str) -> int:
    return ProbeEffect.objects.filter(token=token).count()


def _deliveries(token: str) -> int:
    return ProbeDelivery.objects.filter(token=token).count()


def _all_done() -> bool:
    return not OutboxMessage.objects.filter(done_at__isnull=True).exists()


@pytest.mark.live
def test_crash_between_commit_and_publish(live_worker: LiveProcess) -> None:
    """Rows committed but never relayed (the process died right after COMMIT): the sweeper
    publishes them and each effect happens once."""
    direct, by_beat = f"crash-{uuid.uuid4().hex}", f"crash-beat-{uuid.uuid4().hex}"
    row = OutboxMessage.objects.create(task_name=EFFECT, args=[direct])
    assert outbox_sweep(unsent_after=NOW) == 1  # the sweep service, called directly
    wait_for(lambda: _effects(direct) == 1, timeout=30, what="the swept task's effect")

    # The beat task on a worker, with its default age threshold.
    late = OutboxMessage.objects.create(task_name=EFFECT, args=[by_beat])
    OutboxMessage.objects.filter(pk=late.pk).update(created_at=Now() - timedelta(minutes=1))
    celery_app.send_task("tasks.outbox_sweep", queue="high")
    wait_for(lambda: _effects(by_beat) == 1, timeout=30, what="the beat sweep's effect")

    wait_for(_all_done, timeout=30, what="the worker to confirm both rows")
    assert outbox_sweep(unsent_after=NOW) == 0
    assert (_effects(direct), _deliveries(direct)) == (1, 1)
    assert (_effects(by_beat), _deliveries(by_beat)) == (1, 1)
    row.refresh_from_db()
    assert row.publish_count == 1 and row.done_at is not None


@pytest.mark.live
def test_redis_restart_loses_nothing_accepted(
    live_worker: LiveProcess,
    redis_restart: Callable[[], None],
    private_redis: PrivateRedis,
) -> None:
    """Work accepted before Redis lost everything: messages already published and sitting
    in the queue (the hard case: their rows look sent), and rows never published. After
    the restart one sweep republishes all of them; every effect happens exactly once."""
    live_worker.stop()  # nothing consumes: accepted work waits in Redis
    broker = redis.Redis.from_url(private_redis.url)
    queued_before = broker.llen("default")
    sent_tokens = [f"rs-sent-{i}-{uuid.uuid4().hex[:8]}" for i in range(5)]
    unsent_tokens = [f"rs-unsent-{i}-{uuid.uuid4().hex[:8]}" for i in range(5)]
    with transaction.atomic():
        for token in sent_tokens:
            outbox_enqueue(EFFECT, args=[token])
    for token in unsent_tokens:
        OutboxMessage.objects.create(task_name=EFFECT, args=[token])
    assert OutboxMessage.objects.filter(sent_at__isnull=False).count() == 5
    assert broker.llen("default") == queued_before + 5

    redis_restart()
    assert broker.llen("default") == 0  # the queued messages are gone
    live_worker.start()

    assert outbox_sweep(unsent_after=NOW) == 10
    tokens = sent_tokens + unsent_tokens
    wait_for(
        lambda: ProbeEffect.objects.filter(token__in=tokens).count() >= 10,
        timeout=60,
        what="every accepted message's effect",
    )
    wait_for(_all_done, timeout=30, what="the worker to confirm every row")
    assert outbox_sweep(unsent_after=NOW) == 0
    for token in tokens:
        assert (_effects(token), _deliveries(token)) == (1, 1), token


@pytest.mark.live
def test_a_failed_publish_marks_nothing_sent(
    live_worker: LiveProcess, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses one message of a batch (its queue's key holds a string): which of
    the batch's messages arrived is unknown, so no row is marked sent, neither by the
    relay nor by the sweeper; once Redis takes them, the sweeper publishes them all."""
    from tasks.outbox import relay

    live_worker.stop()  # a worker reading the blocked queue would trip over it too
    # The pause is state of tasks.outbox.relay: patching the package would change nothing.
    monkeypatch.setattr(relay, "_relay_paused_until", 0.0)  # this test's pause ends with it
    # One message to each queue first: the queues are declared, so the refusal comes from
    # the batch's pipeline, after the message to "high" went through in the same pipeline.
    warm = [OutboxMessage.objects.create(task_name=NOOP, queue=q) for q in ("high", "bulk")]
    assert outbox_sweep(unsent_after=NOW) == 2
    OutboxMessage.objects.filter(pk__in=[row.pk for row in warm]).update(done_at=Now())
    broker = redis.Redis.from_url(private_redis.url)
    blocker = f"blocked-{uuid.uuid4().hex}"
    broker.set("bulk", blocker)
    try:
        with transaction.atomic():
            rows = [outbox_enqueue(NOOP, args=[1], queue="high")]
            rows.append(outbox_enqueue(NOOP, args=[2], queue="bulk"))
        ids = [row.pk for row in rows]
        assert not OutboxMessage.objects.filter(pk__in=ids, sent_at__isnull=False).exists()
        with pytest.raises(Exception) as refused:
            outbox_sweep(unsent_after=NOW)
        assert "WRONGTYPE" in f"{refused.value} {refused.value.__cause__}"
        assert not OutboxMessage.objects.filter(pk__in=ids, sent_at__isnull=False).exists()
    finally:
        assert broker.get("bulk") == blocker.encode()
        broker.delete("bulk")
    assert outbox_sweep(unsent_after=NOW) == 2
    assert OutboxMessage.objects.filter(pk__in=ids, sent_at__isnull=False).count() == 2
