"""The drain primitive (tasks/drain.py) against the real Redis, PostgreSQL and broker.

The pending rows are the ordering toolkit's account commands; a pass is `apply_pending`
of one account. What each test drain publishes is read off Celery's `after_task_publish`
(the message really goes to the broker; its task exists nowhere, so no worker runs it):
the test runs the chain's messages itself, as a worker would.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.signals import after_task_publish
from django.db import connections, transaction

from apps.core.redis import get_redis
from tasks.drain import Drain, drain_keys, wake_lua
from tasks.ordering import accept_command, apply_pending
from tests.toolkit_app.models.ordering import Account, AccountCommand
from tests.toolkit_app.tasks.ordering import apply_account_command

from ..harness import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "toolkit.drain_accounts"  # registered nowhere: no worker takes these messages
QUEUE = "bulk"


@pytest.fixture
def published() -> Iterator[list[tuple[list[Any], str | None]]]:
    """(args, eta) of every message a test drain publishes, in order."""
    sent: list[tuple[list[Any], str | None]] = []

    def record(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        if sender == TASK:
            sent.append((list(body[0]), headers.get("eta")))

    after_task_publish.connect(record, weak=False)
    yield sent
    after_task_publish.disconnect(record)
    client = get_redis()
    for raw in client.lrange(QUEUE, 0, -1):
        if json.loads(raw)["headers"]["task"] == TASK:
            client.lrem(QUEUE, 0, raw)


@pytest.fixture
def make_drain() -> Iterator[Callable[..., Drain]]:
    """A drain of this test's own (a random name), its Redis keys gone afterwards."""
    drains: list[Drain] = []

    def make(**knobs: Any) -> Drain:
        drains.append(Drain(f"test-{random.getrandbits(32):x}", task=TASK, queue=QUEUE, **knobs))
        return drains[-1]

    yield make
    client = get_redis()
    for drain in drains:
        keys = list(client.scan_iter(f"{drain.name}:*"))
        if keys:
            client.delete(*keys)


def _accept(account_id: int) -> None:
    accept_command(
        command_model=AccountCommand,
        key_id=account_id,
        apply_task=None,
        fields={"kind": AccountCommand.Kind.ADD, "amount": 1},
    )


def _pending(account_id: int) -> int:
    return AccountCommand.objects.filter(account_id=account_id, status="pending").count()


def _pass(account_id: int, batch_size: int = 200) -> Callable[[], int]:
    def work() -> int:
        return apply_pending(
            key_model=Account,
            command_model=AccountCommand,
            key_id=account_id,
            apply=apply_account_command,
            batch_size=batch_size,
            command_fields=["balance_after"],
        ).decided

    return work


def test_wakes_start_one_chain_per_key(published: list, make_drain: Callable[..., Drain]) -> None:
    drain = make_drain(keyed=True)
    barrier = threading.Barrier(16)

    def wake(key: int) -> bool:
        barrier.wait()
        return drain.wake_now(key)

    results: list[bool] = []
    threads = [threading.Thread(target=lambda k=k: results.append(wake(k))) for k in [1, 2] * 8]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 14 + [True] * 2
    assert sorted(args for args, _ in published) == [[1], [2]]
    # A global drain: one chain, a message without arguments.
    single = make_drain(keyed=False)
    assert single.wake_now() and not single.wake_now()
    assert published[-1] == ([], None)
    with pytest.raises(TypeError):
        single.wake(7)


def test_a_wake_waits_for_the_commit_and_a_rollback_wakes_nothing(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    drain = make_drain(keyed=True)
    with transaction.atomic():
        drain.wake(1)
        assert not get_redis().exists(drain.flag_key(1))
        assert published == []
    assert published == [([1], None)]
    with pytest.raises(RuntimeError), transaction.atomic():
        drain.wake(2)
        raise RuntimeError
    assert published == [([1], None)]
    assert not get_redis().exists(drain.flag_key(2))
    drain.wake(3)  # outside a transaction: at once
    assert published == [([1], None), ([3], None)]


def test_a_wake_during_a_pass_gets_another_pass(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    """The accept commits after the pass looked and wakes before the pass finishes: the
    chain holds the flag, so the waker publishes nothing; the chain must go again."""
    drain = make_drain(keyed=True, budget_s=60, pass_interval_s=0)
    account = Account.objects.create()
    look = _pass(account.pk)
    passes: list[int] = []

    def accept_and_wake() -> None:
        try:
            _accept(account.pk)  # its own transaction, committed here
            drain.wake(account.pk)
        finally:
            connections.close_all()

    def work() -> int:
        done = look()
        passes.append(done)
        if len(passes) == 1:
            waker = threading.Thread(target=accept_and_wake)
            waker.start()
            waker.join()
        return done

    assert drain.wake_now(account.pk)
    assert drain.run(account.pk, work=work) == 1
    assert passes == [0, 1, 0]
    assert _pending(account.pk) == 0
    assert published == [([account.pk], None)]  # the first wake's only
    assert not get_redis().exists(*drain.redis_keys(account.pk))  # the chain ended


def test_the_chain_reenqueues_at_once_after_a_full_batch_else_after_the_interval(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    drain = make_drain(keyed=True, pass_interval_s=30, batch_size=2)
    account = Account.objects.create()
    for _ in range(3):
        _accept(account.pk)
    work = _pass(account.pk, batch_size=2)
    assert drain.wake_now(account.pk)
    assert drain.run(account.pk, work=work) == 2
    assert published[-1] == ([account.pk], None)  # full: the next pass at once
    assert drain.run(account.pk, work=work) == 1
    args, eta = published[-1]
    assert args == [account.pk] and eta is not None  # the rest after the interval
    assert drain.run(account.pk, work=work) == 0
    assert len(published) == 3  # nothing left, nobody woke it: the chain ended
    assert drain.wake_now(account.pk)  # so the next wake starts a new one


def test_a_wake_taken_before_the_commit_is_found_by_the_last_look(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    """A hot path's script takes the wake, then its row commits after the chain's last
    pass looked: the chain looks once more after it ended, and restarts."""
    drain = make_drain(keyed=True, wakes_before_commit=True, pass_interval_s=0)
    account = Account.objects.create()
    look = _pass(account.pk)
    calls: list[int] = []

    def work() -> int:
        done = look()
        calls.append(done)
        if len(calls) == 1:
            _accept(account.pk)  # commits after this pass looked
        return done

    assert drain.wake_now(account.pk)  # the chain is queued ...
    assert not drain.notify(account.pk)  # ... when the request's script finds its flag
    assert drain.run(account.pk, work=work) == 1
    assert calls == [0, 1]
    assert _pending(account.pk) == 0
    assert len(published) == 2  # it found work on its last look: the chain goes on
    assert get_redis().exists(drain.flag_key(account.pk))


def test_a_lost_wake_is_recovered_by_the_sweep(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    drain = make_drain(keyed=True)
    accounts = [Account.objects.create() for _ in range(3)]
    for account in accounts[:2]:
        _accept(account.pk)  # committed, and the process dies before its wake

    def pending_keys() -> list[int]:
        return sorted(
            AccountCommand.objects.filter(status="pending").values_list("account_id", flat=True)
        )

    assert drain.sweep(pending_keys()) == 2
    assert sorted(args for args, _ in published) == [[accounts[0].pk], [accounts[1].pk]]
    assert drain.sweep(pending_keys()) == 0  # their chains are on the way
    ran = 0
    while ran < len(published):  # what the workers do with the chains' messages
        key = published[ran][0][0]
        drain.run(key, work=_pass(key))
        ran += 1
    assert pending_keys() == []
    # Each chain: the pass that found its row, then one that found nothing and ended.
    assert sorted(args[0] for args, _ in published) == sorted(2 * [a.pk for a in accounts[:2]])
    assert not any(get_redis().exists(drain.flag_key(a.pk)) for a in accounts)
    assert drain.sweep(pending_keys()) == 0


def test_a_dead_chain_holds_back_new_ones_only_until_its_lease_lapses(
    published: list, make_drain: Callable[..., Drain]
) -> None:
    drain = make_drain(keyed=True, lease_ms=300)
    account = Account.objects.create()
    _accept(account.pk)
    assert drain.wake_now(account.pk)
    drain.begin_pass(account.pk)  # its worker starts a pass, and is SIGKILLed there
    assert not drain.wake_now(account.pk)
    assert drain.sweep([account.pk]) == 0
    wait_for(lambda: drain.sweep([account.pk]) == 1, timeout=5, interval=0.05, what="lease lapse")
    assert len(published) == 2
    assert drain.run(account.pk, work=_pass(account.pk)) == 1
    assert _pending(account.pk) == 0


def test_the_wake_step_for_a_script_is_the_drains_own(make_drain: Callable[..., Drain]) -> None:
    """A hot-path script that embeds `wake_lua` takes the same flag as `Drain.wake`."""
    drain = make_drain(keyed=True)
    flag, again = drain.redis_keys(5)
    assert (flag, again) == drain_keys(drain.name, 5)
    assert flag.startswith(f"{drain.name}:{{5}}") and again.startswith(f"{drain.name}:{{5}}")
    script = get_redis().register_script(
        wake_lua(flag="KEYS[1]", again="KEYS[2]", lease="ARGV[1]", into="took") + "return took"
    )
    assert script(keys=[flag, again], args=[10_000]) == 1
    assert not drain.notify(5)  # the script's flag holds
    drain.begin_pass(5)
    assert script(keys=[flag, again], args=[10_000]) == 0  # asked for another pass
    assert drain.finish(5)
    drain.begin_pass(5)
    assert not drain.finish(5)
    assert drain.notify(5)
