"""SurgeTask: backoff with full jitter, transient vs permanent, time limits per queue below
the visibility timeout, the redelivery cap, and at-least-once delivery under SIGKILL."""

from __future__ import annotations

import errno
import random
import socket
import time
import uuid
from types import SimpleNamespace
from typing import Any

import kombu.exceptions
import psycopg2
import pytest
import redis.exceptions
import requests
from celery.exceptions import SoftTimeLimitExceeded
from django import db
from django.test import override_settings

from config.celery import LONGEST_HARD_LIMIT_S
from config.celery import app as celery_app
from config.devservices import PrivateRedis
from tasks.base import (
    QUEUE_TIME_LIMITS,
    SurgeTask,
    backoff_delay,
    is_transient,
    queue_time_limits,
)
from tasks.errors import Permanent, Transient
from tasks.models import DeadLetter, OutboxMessage
from tasks.outbox import outbox_enqueue
from tests.toolkit_app.models import ProbeDelivery, ProbeEffect, ProbeItem
from tests.toolkit_app.tasks import probe_effect, probe_flaky, probe_kill_self

from ..harness import LiveProcess, wait_for


# --- Backoff --------------------------------------------------------------------------------
@pytest.mark.parametrize("retries", [0, 1, 2, 5, 9, 12])
def test_full_jitter_stays_within_its_bounds_and_uses_all_of_them(retries: int) -> None:
    base, cap = 0.5, 60.0
    ceiling = min(cap, base * 2**retries)
    rng_state = random.getstate()
    random.seed(retries)
    try:
        delays = [backoff_delay(retries, base=base, cap=cap) for _ in range(2000)]
    finally:
        random.setstate(rng_state)
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole [0, ceiling] range, not a band near the top.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_backoff_caps_and_survives_absurd_retry_counts() -> None:
    assert backoff_delay(10_000, base=1.0, cap=30.0) <= 30.0
    assert backoff_delay(0, base=0.0, cap=30.0) == 0.0


def test_retry_delay_stays_below_a_quarter_of_the_visibility_timeout() -> None:
    class Slow(SurgeTask):
        name = "toolkit.test_slow_backoff"
        retry_backoff_base = 10_000.0
        retry_backoff_max = 10_000.0

    visibility = celery_app.conf.broker_transport_options["visibility_timeout"]
    assert all(Slow().retry_delay(8) <= visibility / 4 for _ in range(50))


def test_per_task_settings_override_the_defaults() -> None:
    assert (probe_flaky.max_retries, probe_flaky.retry_backoff_base) == (2, 0.05)
    assert probe_kill_self.max_redeliveries == 2
    assert SurgeTask.max_retries >= 1 and SurgeTask.max_redeliveries >= 1


def test_the_defaults_are_settings_read_when_used() -> None:
    """The defaults are read from settings each time (override_settings, a worker's
    environment), not frozen when tasks/base.py was imported; a value chosen for one task
    still wins over them."""
    knobs = {
        "TASK_MAX_RETRIES": 7,
        "TASK_MAX_REDELIVERIES": 9,
        "TASK_RETRY_BACKOFF_BASE": 0.25,
        "TASK_RETRY_BACKOFF_MAX": 3.0,
    }
    with override_settings(**knobs):
        for task in (SurgeTask, probe_effect):
            assert (
                task.max_retries,
                task.max_redeliveries,
                task.retry_backoff_base,
                task.retry_backoff_max,
            ) == (7, 9, 0.25, 3.0)
        assert all(probe_effect.retry_delay(10) <= 3.0 for _ in range(50))
        assert (probe_flaky.max_retries, probe_flaky.retry_backoff_base) == (2, 0.05)
        assert probe_kill_self.max_redeliveries == 2


# --- Classification -------------------------------------------------------------------------
class _PermanentConnectionError(Permanent, ConnectionError):
    pass


@pytest.mark.parametrize(
    "exc",
    [
        Transient("try later"),
        ConnectionResetError(),
        ConnectionRefusedError(),
        TimeoutError(),
        socket.gaierror(),
        OSError(errno.ECONNRESET, "reset"),
        OSError(errno.EHOSTUNREACH, "no route"),
        db.OperationalError("server closed the connection"),
        db.InterfaceError("connection already closed"),
        psycopg2.OperationalError(),
        redis.exceptions.ConnectionError(),
        redis.exceptions.TimeoutError(),
        kombu.exceptions.OperationalError(),
        requests.ConnectionError(),
        requests.Timeout(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        Permanent("bad input"),
        _PermanentConnectionError(),  # Permanent always wins
        ValueError(),
        KeyError("x"),
        TypeError(),
        FileNotFoundError(errno.ENOENT, "gone"),
        PermissionError(errno.EACCES, "no"),
        OSError(errno.ENOSPC, "disk full"),
        db.IntegrityError(),
        SoftTimeLimitExceeded(),
        RuntimeError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


# --- Time limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("visibility", [10.0, 60.0, 1200.0, 3600.0])
def test_every_queue_limit_is_below_the_visibility_timeout(visibility: float) -> None:
    for queue in [*QUEUE_TIME_LIMITS, "unknown"]:
        soft, hard = queue_time_limits(queue, visibility_timeout=visibility)
        assert 0 < soft < hard <= visibility / 2 < visibility, (queue, soft, hard)


def test_configured_limits() -> None:
    visibility = celery_app.conf.broker_transport_options["visibility_timeout"]
    for queue in QUEUE_TIME_LIMITS:
        soft, hard = queue_time_limits(queue)
        assert soft < hard <= visibility / 2
    # high gives way first; bulk may run as long as anything may.
    assert queue_time_limits("high")[1] < queue_time_limits("default")[1]
    assert QUEUE_TIME_LIMITS["bulk"][1] == LONGEST_HARD_LIMIT_S
    assert celery_app.conf.task_time_limit <= visibility / 2


def test_limits_chosen_for_a_task_or_a_message_win() -> None:
    """Celery stamps the global limits on every message: those mean "nothing chosen" and
    give way to the queue's; anything else was chosen and stays."""
    from tasks.limits import _apply_queue_time_limits

    conf = celery_app.conf
    defaults = [conf.task_time_limit, conf.task_soft_time_limit]
    plain = SimpleNamespace(time_limit=defaults[0], soft_time_limit=defaults[1])
    soft, hard = queue_time_limits("high")

    def received(limits: list[Any], task: Any) -> Any:
        request = SimpleNamespace(
            time_limits=limits, task=task, delivery_info={"routing_key": "high"}
        )
        _apply_queue_time_limits(request=request)
        return tuple(request.time_limits)

    assert received(defaults, plain) == (hard, soft)
    assert received([None, None], SimpleNamespace(time_limit=None, soft_time_limit=None)) == (
        hard,
        soft,
    )
    assert received([7, 5], plain) == (7, 5)  # apply_async(time_limit=7, ...)
    chosen = SimpleNamespace(time_limit=9, soft_time_limit=8)  # @shared_task(time_limit=9)
    assert received(defaults, chosen) == (9, 8)


def test_only_json_crosses_the_broker() -> None:
    assert celery_app.conf.accept_content == ["json"]
    assert celery_app.conf.task_serializer == "json"


# --- Live -----------------------------------------------------------------------------------
def _deliveries(token: str) -> Any:
    return ProbeDelivery.objects.filter(token=token)


def _effects(token: str) -> int:
    return ProbeEffect.objects.filter(token=token).count()


def _all_done() -> bool:
    return not OutboxMessage.objects.filter(done_at__isnull=True).exists()


def _log_line(worker: LiveProcess, *needles: str) -> str | None:
    return next(
        (ln for ln in worker.log_text().splitlines() if all(n in ln for n in needles)), None
    )


@pytest.mark.live
def test_sigkill_of_the_worker_holding_a_task(
    live_worker: LiveProcess, live_env: dict[str, str], private_redis: PrivateRedis
) -> None:
    """acks_late: the worker dies (whole process group, no cleanup) while it holds the
    message; after the visibility timeout a new worker runs it again; one effect."""
    token = f"sigkill-{uuid.uuid4().hex}"
    outbox_enqueue("toolkit.probe_effect", args=[token], kwargs={"sleep_s": 3.0})
    wait_for(lambda: _deliveries(token).exists(), timeout=30, what="the first delivery")
    live_worker.kill()
    assert _effects(token) == 0
    # The message waits, unacked, in Redis. A worker hands it out again once it has been
    # out longer than the visibility timeout (CELERY_VISIBILITY_TIMEOUT in live_env); kombu
    # looks when a worker starts and then every 100 s by default, so the new worker starts
    # once that much time has passed since the dead one fetched the message (as a
    # supervisor restarting a crashed worker after a while would).
    broker = redis.Redis.from_url(private_redis.url)
    fetched_at = next(
        broker.zscore("unacked_index", tag)
        for tag, payload in broker.hgetall("unacked").items()
        if token.encode() in payload
    )
    visibility = float(live_env["CELERY_VISIBILITY_TIMEOUT"])
    wait_for(lambda: time.time() > fetched_at + visibility + 0.5, timeout=visibility + 30)
    live_worker.start()
    wait_for(lambda: _effects(token) == 1, timeout=60, what="the effect after redelivery")
    wait_for(_all_done, timeout=30, what="the row to be confirmed")
    deliveries = list(_deliveries(token).order_by("id"))
    assert len(deliveries) == 2
    assert [d.redelivered for d in deliveries] == [False, True]
    assert deliveries[0].task_id == deliveries[1].task_id
    assert _effects(token) == 1
    assert not DeadLetter.objects.exists()


@pytest.mark.live
def test_a_task_that_kills_its_worker_every_time_ends_as_one_dead_letter(
    live_worker: LiveProcess,
) -> None:
    token = f"killer-{uuid.uuid4().hex}"
    row = outbox_enqueue("toolkit.probe_kill_self", args=[token])
    dead = wait_for(
        lambda: DeadLetter.objects.filter(task_name="toolkit.probe_kill_self").first(),
        timeout=90,
        what="the dead letter after the redelivery cap",
    )
    wait_for(_all_done, timeout=30, what="the row to be confirmed")
    # max_redeliveries=2: the first run and two redeliveries, then the cap.
    assert _deliveries(token).count() == 3
    assert dead.reason == "redelivery_cap"
    assert dead.attempts == 3
    assert dead.task_id == f"outbox-{row.pk}"
    assert dead.args == [token]
    assert DeadLetter.objects.count() == 1
    # Nothing left to loop: the worker is alive and idle, the row is done.
    assert live_worker.alive()
    assert _deliveries(token).count() == 3


@pytest.mark.live
def test_permanent_error_is_one_dead_letter_without_retries(live_worker: LiveProcess) -> None:
    token = f"perm-{uuid.uuid4().hex}"
    outbox_enqueue("toolkit.probe_permanent", args=[token])
    dead = wait_for(
        lambda: DeadLetter.objects.filter(task_name="toolkit.probe_permanent").first(),
        timeout=30,
        what="the dead letter",
    )
    wait_for(_all_done, timeout=30, what="the row to be confirmed")
    assert _deliveries(token).count() == 1
    assert (dead.reason, dead.attempts) == ("permanent", 1)
    assert dead.exception_class == "tasks.errors.Permanent"
    assert f"bad input {token}" in dead.exception_message
    assert "raise Permanent" in dead.traceback


@pytest.mark.live
def test_queue_time_limits_apply(live_worker: LiveProcess) -> None:
    """On `high`, with the test worker's 10 s visibility timeout, the limits are 4.5 s soft
    and 5 s hard. A task sleeping 30 s is stopped by the soft limit; one that swallows it is
    killed at the hard limit. Each becomes one dead letter, with no effect."""
    slow, stubborn = f"slow-{uuid.uuid4().hex}", f"stubborn-{uuid.uuid4().hex}"
    outbox_enqueue("toolkit.probe_sleep", args=[slow, 30.0], queue="high")
    outbox_enqueue("toolkit.probe_stubborn", args=[stubborn, 30.0], queue="high")
    wait_for(lambda: DeadLetter.objects.count() == 2, timeout=30, what="two dead letters")
    soft = DeadLetter.objects.get(task_name="toolkit.probe_sleep")
    assert soft.exception_class.endswith(".SoftTimeLimitExceeded")
    assert (soft.reason, soft.queue) == ("error", "high")
    hard = DeadLetter.objects.get(task_name="toolkit.probe_stubborn")
    assert hard.exception_class.endswith(".TimeLimitExceeded")
    assert (hard.reason, hard.args) == ("time_limit", [stubborn, 30.0])
    assert _effects(slow) == 0
    wait_for(_all_done, timeout=30, what="both rows to be confirmed")
    assert _deliveries(slow).count() == _deliveries(stubborn).count() == 1


@pytest.mark.live
def test_bad_input_never_loops(live_worker: LiveProcess) -> None:
    """Unknown task name, malformed args: one dead letter each. A row deleted before its
    task runs: a quiet no-op with a log line. A pickled message: refused, never run."""
    unknown = outbox_enqueue("toolkit.no_such_task", args=[1])
    malformed = outbox_enqueue("toolkit.probe_effect", args=[1, 2, 3, 4, 5])
    item = ProbeItem.objects.create(name="gone soon")
    item_id = item.pk
    item.delete()
    outbox_enqueue("toolkit.probe_touch", args=[item_id])
    pickled = f"pickle-{uuid.uuid4().hex}"
    with celery_app.producer_or_acquire() as producer:
        celery_app.send_task(
            "toolkit.probe_effect", args=[pickled], producer=producer, serializer="pickle"
        )

    wait_for(lambda: DeadLetter.objects.count() == 2, timeout=30, what="two dead letters")
    wait_for(_all_done, timeout=30, what="every row to be confirmed")
    by_task = {d.task_id: d for d in DeadLetter.objects.all()}
    assert by_task[f"outbox-{unknown.pk}"].reason == "unknown_task"
    assert by_task[f"outbox-{malformed.pk}"].reason == "error"
    assert by_task[f"outbox-{malformed.pk}"].exception_class == "TypeError"
    assert wait_for(
        lambda: _log_line(live_worker, f"probe_touch item_id={item_id}", "gone"), timeout=30
    )
    assert wait_for(lambda: _log_line(live_worker, "ContentDisallowed"), timeout=30)
    assert not _deliveries(pickled).exists()
    assert DeadLetter.objects.count() == 2
