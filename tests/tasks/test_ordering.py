"""Per-key ordering: gapless seqs at acceptance, strict in-order application, and the
result of a sequential model whatever the delivery (duplicates, shuffles, many workers)."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.db import DataError, IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from config.celery import app
from config.devservices import PrivateRedis
from tasks.models.ordering import CommandStatus
from tasks.ordering import (
    ApplyOutcome,
    ApplyReport,
    OrderingError,
    accept_command,
    apply_pending,
    apply_pending_keys,
    assign_seq,
)
from tests.toolkit_app.models.ordering import Account, AccountCommand
from tests.toolkit_app.tasks.ordering import APPLY_ACCOUNT, BATCH_SIZE, apply_account_command

from ..harness import LiveProcess, wait_for

ADD = AccountCommand.Kind.ADD
SUBTRACT = AccountCommand.Kind.SUBTRACT
REJECTED_REASON = "insufficient_balance"


def _accept(account_id: int, kind: str, amount: int, *, apply_task: str | None = None) -> int:
    command = accept_command(
        command_model=AccountCommand,
        key_id=account_id,
        apply_task=apply_task,
        fields={"kind": kind, "amount": amount},
    )
    return command.seq


def _apply(account_id: int, *, batch_size: int = 200, apply: Any = None) -> ApplyReport:
    return apply_pending(
        key_model=Account,
        command_model=AccountCommand,
        key_id=account_id,
        apply=apply or apply_account_command,
        batch_size=batch_size,
        command_fields=["balance_after"],
    )


def _model(initial: int, commands: Iterable[tuple[int, str, int]]) -> tuple[int, list[tuple]]:
    """The sequential truth: (seq, status, reason, balance_after) per command, in seq order."""
    balance = initial
    decided = []
    for seq, kind, amount in sorted(commands):
        if kind == SUBTRACT and amount > balance:
            decided.append((seq, CommandStatus.REJECTED, REJECTED_REASON, balance))
            continue
        balance += amount if kind == ADD else -amount
        decided.append((seq, CommandStatus.APPLIED, "", balance))
    return balance, decided


def _stored(account_id: int) -> list[tuple]:
    return list(
        AccountCommand.objects.filter(account_id=account_id)
        .order_by("seq")
        .values_list("seq", "status", "reason", "balance_after")
    )


def _snapshot() -> tuple[list[tuple], list[tuple]]:
    accounts = list(
        Account.objects.order_by("pk").values_list("pk", "balance", "last_seq", "last_applied_seq")
    )
    commands = list(
        AccountCommand.objects.order_by("pk").values_list(
            "pk", "seq", "status", "reason", "balance_after", "applied_at"
        )
    )
    return accounts, commands


# --- accepting ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_assign_seq_refuses_to_run_outside_a_transaction() -> None:
    account = Account.objects.create()
    with pytest.raises(OrderingError, match="inside transaction"):
        assign_seq(key_model=Account, key_id=account.pk)
    account.refresh_from_db()
    assert account.last_seq == 0


@pytest.mark.django_db(transaction=True)
def test_assign_seq_is_gapless_per_key_when_transactions_roll_back() -> None:
    account, other = Account.objects.create(), Account.objects.create()
    assert _accept(account.pk, ADD, 5) == 1
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _accept(account.pk, ADD, 5) == 2
        raise RuntimeError("the accepting transaction fails after taking seq 2")
    # A command insert that violates a constraint gives its seq back too.
    with pytest.raises(IntegrityError):
        _accept(account.pk, ADD, 0)
    assert _accept(other.pk, ADD, 1) == 1  # per key: the other key has its own count
    assert _accept(account.pk, SUBTRACT, 3) == 2
    assert _accept(account.pk, ADD, 1) == 3
    account.refresh_from_db()
    assert (account.last_seq, account.last_applied_seq) == (3, 0)
    seqs = list(AccountCommand.objects.filter(account=account).values_list("seq", flat=True))
    assert sorted(seqs) == [1, 2, 3]


@pytest.mark.django_db
def test_assign_seq_for_an_unknown_key_raises() -> None:
    with pytest.raises(Account.DoesNotExist):
        assign_seq(key_model=Account, key_id=987654321)


# --- applying -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_applies_in_seq_order_and_stops_at_a_gap() -> None:
    account = Account.objects.create(last_seq=4)
    # Inserted out of order, and seq 3 is missing (not committed yet, as far as the
    # applier can tell).
    for seq, kind, amount in [(4, SUBTRACT, 7), (2, SUBTRACT, 8), (1, ADD, 10)]:
        AccountCommand.objects.create(account=account, seq=seq, kind=kind, amount=amount)

    report = _apply(account.pk)
    assert report == ApplyReport(
        key_id=account.pk, applied=2, rejected=0, last_applied_seq=2, waiting_for_seq=3
    )
    assert _stored(account.pk) == [
        (1, CommandStatus.APPLIED, "", 10),
        (2, CommandStatus.APPLIED, "", 2),
        (4, CommandStatus.PENDING, "", None),
    ]

    AccountCommand.objects.create(account=account, seq=3, kind=ADD, amount=5)
    report = _apply(account.pk)
    assert (report.applied, report.last_applied_seq, report.waiting_for_seq) == (2, 4, None)
    account.refresh_from_db()
    assert (account.balance, account.last_applied_seq) == (0, 4)
    assert _stored(account.pk)[2:] == [
        (3, CommandStatus.APPLIED, "", 7),
        (4, CommandStatus.APPLIED, "", 0),
    ]


@pytest.mark.django_db
def test_applying_twice_changes_nothing() -> None:
    account = Account.objects.create()
    for kind, amount in [(ADD, 5), (SUBTRACT, 9), (ADD, 4), (SUBTRACT, 9)]:
        _accept(account.pk, kind, amount)
    first = _apply(account.pk)
    assert (first.applied, first.rejected, first.last_applied_seq) == (3, 1, 4)
    before = _snapshot()

    again = _apply(account.pk)
    assert again == ApplyReport(key_id=account.pk, last_applied_seq=4)
    assert _snapshot() == before


@pytest.mark.django_db
def test_a_rejected_command_does_not_block_later_ones() -> None:
    account = Account.objects.create(balance=3)
    plan = [(SUBTRACT, 5), (ADD, 10), (SUBTRACT, 12), (SUBTRACT, 13), (ADD, 1)]
    accepted = [(_accept(account.pk, kind, amount), kind, amount) for kind, amount in plan]

    report = _apply(account.pk)
    assert (report.applied, report.rejected, report.last_applied_seq) == (3, 2, 5)
    balance, expected = _model(3, accepted)
    assert _stored(account.pk) == expected
    assert [row[1] for row in expected] == ["rejected", "applied", "applied", "rejected", "applied"]
    account.refresh_from_db()
    assert account.balance == balance == 2
    decided_at = set(AccountCommand.objects.values_list("applied_at", flat=True))
    assert None not in decided_at


@pytest.mark.django_db
def test_a_callback_exception_rolls_back_the_whole_batch() -> None:
    account = Account.objects.create(balance=1)
    for amount in (10, 20, 30):
        _accept(account.pk, ADD, amount)

    def explode_on_third(key: Account, command: AccountCommand) -> ApplyOutcome:
        if command.seq == 3:
            raise ValueError("the callback failed half way")
        return apply_account_command(key, command)

    before = _snapshot()
    with pytest.raises(ValueError, match="half way"):
        _apply(account.pk, apply=explode_on_third)
    assert _snapshot() == before  # nothing of seq 1 and 2 was kept

    report = _apply(account.pk)
    assert (report.applied, report.last_applied_seq) == (3, 3)
    account.refresh_from_db()
    assert account.balance == 61


@pytest.mark.django_db
def test_a_full_batch_reports_more_and_the_next_run_continues() -> None:
    account = Account.objects.create()
    accepted = [(_accept(account.pk, ADD, n), ADD, n) for n in range(1, 6)]

    reports = [_apply(account.pk, batch_size=2) for _ in range(4)]
    assert [(r.decided, r.last_applied_seq, r.has_more) for r in reports] == [
        (2, 2, True),
        (2, 4, True),
        (1, 5, False),
        (0, 5, False),
    ]
    assert _stored(account.pk) == _model(0, accepted)[1]


@pytest.mark.django_db
def test_work_per_run_does_not_grow_with_the_batch() -> None:
    small, large = Account.objects.create(), Account.objects.create()
    for _ in range(3):
        _accept(small.pk, ADD, 1)
    for _ in range(60):
        _accept(large.pk, ADD, 1)

    counts = []
    for account in (small, large):
        with CaptureQueriesContext(connection) as queries:
            _apply(account.pk)
        counts.append([q["sql"].split()[0] for q in queries.captured_queries])
    # Lock the key, read the batch, one UPDATE for all commands, one for the key (inside
    # the test's transaction, atomic() adds a savepoint and its release).
    assert (
        counts[0] == counts[1] == ["SAVEPOINT", "SELECT", "SELECT", "UPDATE", "UPDATE", "RELEASE"]
    )
    assert Account.objects.get(pk=large.pk).balance == 60


@pytest.mark.django_db
def test_contract_errors_are_loud() -> None:
    account = Account.objects.create()
    _accept(account.pk, ADD, 1)
    with pytest.raises(ImproperlyConfigured):
        apply_pending(
            key_model=Account,
            command_model=AccountCommand,
            key_id=account.pk,
            apply=apply_account_command,
            command_fields=["seq"],  # the library owns seq
        )
    with pytest.raises(OrderingError, match="not an ApplyOutcome"):
        _apply(account.pk, apply=lambda key, command: None)
    # An overlong reason fails the batch rather than being cut short in silence.
    with pytest.raises(DataError):
        _apply(account.pk, apply=lambda key, command: ApplyOutcome.rejected("x" * 201))
    assert _apply(account.pk).applied == 1


@pytest.mark.django_db
def test_a_missing_key_is_a_quiet_no_op() -> None:
    assert _apply(987654321) == ApplyReport(key_id=987654321, key_found=False)


# --- many keys in one pass -------------------------------------------------------------------


def _apply_keys(**kwargs: Any) -> list[ApplyReport]:
    return apply_pending_keys(
        key_model=Account,
        command_model=AccountCommand,
        apply=kwargs.pop("apply", apply_account_command),
        command_fields=["balance_after"],
        **kwargs,
    )


@pytest.mark.django_db
def test_many_keys_in_one_pass_match_the_sequential_model() -> None:
    rng = random.Random(3)
    accounts = [Account.objects.create(balance=5) for _ in range(6)]
    idle = Account.objects.create()
    accepted: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for _ in range(120):
        account = rng.choice(accounts)
        kind, amount = rng.choice([ADD, SUBTRACT]), rng.randint(1, 20)
        accepted[account.pk].append((_accept(account.pk, kind, amount), kind, amount))
    seen: list[tuple[int, list[int]]] = []

    reports = _apply_keys(on_decided=lambda key, cmds: seen.append((key.pk, [c.seq for c in cmds])))
    assert sorted(r.key_id for r in reports) == sorted(accepted)  # never the idle key
    assert sum(r.decided for r in reports) == 120
    for account in accounts:
        balance, expected = _model(5, accepted[account.pk])
        assert _stored(account.pk) == expected
        account.refresh_from_db()
        assert (account.balance, account.last_applied_seq) == (balance, len(expected))
    assert sorted(seen) == sorted((pk, [s for s, _, _ in rows]) for pk, rows in accepted.items())
    assert Account.objects.get(pk=idle.pk).last_applied_seq == 0
    before = _snapshot()
    assert _apply_keys() == []  # nothing pending: nothing locked, nothing written
    assert _snapshot() == before


@pytest.mark.django_db
def test_many_keys_stop_at_a_gap_and_respect_the_batch_and_the_key_limit() -> None:
    gap, full, third = (Account.objects.create() for _ in range(3))
    _accept(gap.pk, ADD, 1)
    AccountCommand.objects.create(account_id=gap.pk, seq=3, kind=ADD, amount=5)
    Account.objects.filter(pk=gap.pk).update(last_seq=3)  # seq 2 is not visible yet
    for _ in range(5):
        _accept(full.pk, ADD, 1)
    _accept(third.pk, ADD, 1)

    reports = {r.key_id: r for r in _apply_keys(batch_size=2, max_keys=2)}
    assert sorted(reports) == sorted([gap.pk, full.pk])  # the lowest ids first
    assert (reports[gap.pk].decided, reports[gap.pk].waiting_for_seq) == (1, 2)
    assert (reports[full.pk].decided, reports[full.pk].has_more) == (2, True)
    reports = {r.key_id: r for r in _apply_keys(batch_size=2, exclude=[gap.pk])}
    assert sorted(reports) == sorted([full.pk, third.pk])
    assert _stored(gap.pk)[1] == (3, CommandStatus.PENDING, "", None)


@pytest.mark.django_db
def test_a_pass_costs_the_same_statements_for_one_key_or_many() -> None:
    def statements(keys: int) -> list[str]:
        accounts = [Account.objects.create() for _ in range(keys)]
        for account in accounts:
            _accept(account.pk, ADD, 2)
            _accept(account.pk, SUBTRACT, 1)
        with CaptureQueriesContext(connection) as queries:
            assert sum(r.decided for r in _apply_keys()) == 2 * keys
        return [q["sql"].split()[0] for q in queries.captured_queries]

    assert statements(1) == statements(40) == [
        "SAVEPOINT", "SELECT", "SELECT", "UPDATE", "UPDATE", "RELEASE"
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_callback_exception_rolls_back_the_whole_pass() -> None:
    first, second = Account.objects.create(), Account.objects.create()
    _accept(first.pk, ADD, 1)
    _accept(second.pk, ADD, 1)

    def explode_on_second(key: Account, command: AccountCommand) -> ApplyOutcome:
        if key.pk == second.pk:
            raise ValueError("the callback failed")
        return apply_account_command(key, command)

    before = _snapshot()
    with pytest.raises(ValueError, match="failed"):
        _apply_keys(apply=explode_on_second)
    assert _snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_a_pass_skips_a_key_another_applier_holds() -> None:
    held, free = Account.objects.create(), Account.objects.create()
    _accept(held.pk, ADD, 1)
    _accept(free.pk, ADD, 2)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            list(Account.objects.select_for_update().filter(pk=held.pk))
            locked.set()
            assert release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(_in_thread(hold))
        assert locked.wait(30)
        try:
            assert [r.key_id for r in _apply_keys()] == [free.pk]  # did not wait
        finally:
            release.set()
        holder.result()
    assert [r.key_id for r in _apply_keys()] == [held.pk]


# --- concurrency, in-process ----------------------------------------------------------------


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return fn()
        finally:
            connections.close_all()  # this thread's connections only

    return run


@pytest.mark.django_db(transaction=True)
def test_concurrent_appliers_decide_each_command_exactly_once() -> None:
    account = Account.objects.create(balance=20)
    rng = random.Random(7)
    accepted = []
    for _ in range(80):
        kind, amount = rng.choice([ADD, SUBTRACT]), rng.randint(1, 25)
        accepted.append((_accept(account.pk, kind, amount), kind, amount))

    def drain() -> int:
        decided = 0
        while True:
            report = _apply(account.pk, batch_size=7)
            decided += report.decided
            if not report.has_more:
                return decided

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_in_thread(drain)) for _ in range(4)]
        per_thread = [f.result() for f in futures]
    assert sum(per_thread) == 80
    balance, expected = _model(20, accepted)
    assert _stored(account.pk) == expected
    account.refresh_from_db()
    assert (account.balance, account.last_applied_seq) == (balance, 80)


@pytest.mark.django_db(transaction=True)
def test_an_applier_waits_for_an_open_accept_and_then_applies_it() -> None:
    account = Account.objects.create()
    _accept(account.pk, ADD, 3)
    accepted, release = threading.Event(), threading.Event()
    applier_pid: list[int] = []

    def accept_and_hold() -> int:
        with transaction.atomic():
            seq = _accept(account.pk, ADD, 4)
            accepted.set()
            assert release.wait(30)
        return seq

    def apply_when_asked() -> ApplyReport:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            applier_pid.append(cursor.fetchone()[0])
        return _apply(account.pk)

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(_in_thread(accept_and_hold))
        assert accepted.wait(30)
        applier = pool.submit(_in_thread(apply_when_asked))

        def applier_waits_on_a_lock() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    [applier_pid[0] if applier_pid else 0],
                )
                row = cursor.fetchone()
            return row is not None and row[0] == "Lock"

        wait_for(applier_waits_on_a_lock, what="the applier to wait for the key lock")
        release.set()
        assert holder.result() == 2
        report = applier.result()
    assert (report.applied, report.last_applied_seq) == (2, 2)
    assert Account.objects.get(pk=account.pk).balance == 7


# --- live: threads accept, three workers apply with duplicates and shuffles ------------------

KEYS = 20
COMMANDS_PER_KEY = 50
ACCEPT_THREADS = 8
INITIAL_BALANCE = 100


@pytest.mark.live
def test_live_ordering_matches_a_sequential_model(
    worker_pool: Callable[..., list[LiveProcess]], private_redis: PrivateRedis
) -> None:
    workers = worker_pool(3)
    seed = random.randrange(2**32)
    print(f"ordering live test seed={seed}")
    rng = random.Random(seed)
    key_ids = [Account.objects.create(balance=INITIAL_BALANCE).pk for _ in range(KEYS)]

    plan: list[tuple[int, str, int]] = []
    for key_id in key_ids:
        # One subtraction no balance can cover, so every key has a rejection to order.
        plan.append((key_id, SUBTRACT, 10**9))
        plan += [
            (key_id, rng.choice([ADD, SUBTRACT]), rng.randint(1, 60))
            for _ in range(COMMANDS_PER_KEY - 1)
        ]
    rng.shuffle(plan)

    def publish(key_id: int) -> None:
        # Straight to the broker, not through the outbox: deliveries the applier must
        # tolerate (duplicates, any key, any time, even before the accept commits).
        app.send_task(APPLY_ACCOUNT, args=[key_id])

    accepted: list[tuple[int, int, str, int]] = []

    def submit(chunk: list[tuple[int, str, int]], thread_seed: int) -> None:
        trng = random.Random(thread_seed)
        for key_id, kind, amount in chunk:
            with transaction.atomic():
                seq = _accept(key_id, kind, amount, apply_task=APPLY_ACCOUNT)
                if trng.random() < 0.1:
                    publish(key_id)  # its applier waits on the key lock until we commit
            accepted.append((key_id, seq, kind, amount))
            if trng.random() < 0.2:
                publish(key_id)
            if trng.random() < 0.1:
                publish(trng.choice(key_ids))

    for key_id in rng.sample(key_ids, KEYS):
        publish(key_id)
    with ThreadPoolExecutor(ACCEPT_THREADS) as pool:
        futures = [
            pool.submit(_in_thread(lambda i=i: submit(plan[i::ACCEPT_THREADS], seed + i)))
            for i in range(ACCEPT_THREADS)
        ]
        for future in futures:
            future.result()
    for key_id in rng.sample(key_ids, KEYS):
        publish(key_id)
    assert len(accepted) == KEYS * COMMANDS_PER_KEY

    def drained() -> bool:
        pending = AccountCommand.objects.filter(status=CommandStatus.PENDING).count()
        behind = Account.objects.exclude(last_applied_seq=COMMANDS_PER_KEY).count()
        return pending == 0 and behind == 0

    wait_for(drained, timeout=150, interval=0.5, what="every command to be decided")
    # Let the remaining duplicates run too: they must change nothing.
    broker = redis.Redis.from_url(private_redis.url)
    wait_for(lambda: broker.llen("default") == 0, timeout=60, what="the queue to empty")

    by_key: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for key_id, seq, kind, amount in accepted:
        by_key[key_id].append((seq, kind, amount))
    rejected = 0
    for key_id in key_ids:
        commands = sorted(by_key[key_id])
        assert [seq for seq, _, _ in commands] == list(range(1, COMMANDS_PER_KEY + 1))
        stored = list(
            AccountCommand.objects.filter(account_id=key_id)
            .order_by("seq")
            .values_list("seq", "kind", "amount")
        )
        assert stored == commands, f"seed={seed}: key {key_id} stored other commands"
        balance, expected = _model(INITIAL_BALANCE, commands)
        assert _stored(key_id) == expected, f"seed={seed}: key {key_id} differs from the model"
        account = Account.objects.get(pk=key_id)
        assert (account.balance, account.last_seq, account.last_applied_seq) == (
            balance,
            COMMANDS_PER_KEY,
            COMMANDS_PER_KEY,
        )
        rejected += sum(1 for row in expected if row[1] == CommandStatus.REJECTED)
    assert rejected >= KEYS
    assert not AccountCommand.objects.filter(balance_after__lt=0).exists()
    assert not AccountCommand.objects.filter(balance_after__isnull=True).exists()
    assert not Account.objects.filter(balance__lt=0).exists()

    for worker in workers:
        log = worker.log_text()
        assert f"Task {APPLY_ACCOUNT}[" in log and "succeeded" in log, worker.name
        failures = [ln for ln in log.splitlines() if APPLY_ACCOUNT in ln and "raised" in ln]
        assert not failures, f"{worker.name}: {failures[:3]}"


@pytest.mark.live
def test_live_a_full_batch_re_enqueues_itself_until_drained(live_worker: LiveProcess) -> None:
    account = Account.objects.create(balance=5)
    with transaction.atomic():
        accepted = [
            (_accept(account.pk, kind, amount), kind, amount)
            for kind, amount in [(ADD, 3), (SUBTRACT, 9), (SUBTRACT, 4)] * 12
        ]
    # One delivery for 36 commands: the applier takes BATCH_SIZE at a time, so only the
    # continuation it enqueues itself (through the outbox) can finish the job.
    assert len(accepted) > 3 * BATCH_SIZE
    app.send_task(APPLY_ACCOUNT, args=[account.pk])

    wait_for(
        lambda: Account.objects.filter(pk=account.pk, last_applied_seq=len(accepted)).exists(),
        timeout=60,
        what="the applier to continue through every batch",
    )
    balance, expected = _model(5, accepted)
    assert _stored(account.pk) == expected
    assert Account.objects.get(pk=account.pk).balance == balance
