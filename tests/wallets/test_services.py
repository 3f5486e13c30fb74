"""Services and admin of the wallets app: the apply callback, the ordered applier against a
sequential model, and the verify action (the naive variant's failure is in tests/lab/)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.wallets import selectors, services
from apps.wallets.models import Wallet, WalletTransaction

from .model import DEPOSIT, WITHDRAWAL, sequential_model, stored_decisions

pytestmark = pytest.mark.django_db


@pytest.fixture
def wallet(django_user_model: Any) -> Wallet:
    return services.wallet_create(owner_id=django_user_model.objects.create_user("ann").pk)


def _accept(wallet: Wallet, kind: str, amount: str) -> tuple[int, str, Decimal]:
    accepted = services.transaction_accept(wallet_id=wallet.pk, kind=kind, amount=Decimal(amount))
    return accepted.seq, kind, Decimal(amount)


def test_decide_moves_money_or_rejects_without_touching_the_wallet(wallet: Wallet) -> None:
    wallet.balance = Decimal("10.00")
    deposit = WalletTransaction(wallet=wallet, seq=1, kind=DEPOSIT, amount=Decimal("2.50"))
    assert services.transaction_decide(wallet, deposit).status == "applied"
    assert wallet.balance == deposit.balance_after == Decimal("12.50")

    too_much = WalletTransaction(wallet=wallet, seq=2, kind=WITHDRAWAL, amount=Decimal("12.51"))
    outcome = services.transaction_decide(wallet, too_much)
    assert (outcome.status, outcome.reason) == ("rejected", "insufficient_funds")
    assert wallet.balance == too_much.balance_after == Decimal("12.50")

    exact = WalletTransaction(wallet=wallet, seq=3, kind=WITHDRAWAL, amount=Decimal("12.50"))
    assert services.transaction_decide(wallet, exact).status == "applied"
    assert wallet.balance == exact.balance_after == Decimal("0.00")


def test_a_deposit_past_the_largest_balance_is_rejected_and_later_ones_continue(
    wallet: Wallet,
) -> None:
    Wallet.objects.filter(pk=wallet.pk).update(balance=services.MAX_BALANCE - Decimal("1.00"))
    accepted = [
        _accept(wallet, DEPOSIT, "2.00"),
        _accept(wallet, DEPOSIT, "1.00"),
        _accept(wallet, WITHDRAWAL, "5.00"),
    ]
    services.transactions_apply(wallet_id=wallet.pk)
    assert stored_decisions(wallet.pk) == [
        (1, "rejected", "balance_limit", services.MAX_BALANCE - Decimal("1.00")),
        (2, "applied", "", services.MAX_BALANCE),
        (3, "applied", "", services.MAX_BALANCE - Decimal("5.00")),
    ]
    assert [seq for seq, _, _ in accepted] == [1, 2, 3]


def test_the_applier_matches_the_sequential_model(wallet: Wallet, caplog: Any) -> None:
    rng = random.Random(11)
    accepted = [
        _accept(wallet, rng.choice([DEPOSIT, WITHDRAWAL]), f"{rng.randint(1, 5000) / 100:.2f}")
        for _ in range(60)
    ]
    with caplog.at_level(logging.DEBUG, logger="apps.wallets.services"):
        report = services.transactions_apply(wallet_id=wallet.pk)
    balance, expected = sequential_model(accepted)
    assert report.decided == 60
    assert report.rejected == sum(1 for row in expected if row[1] == "rejected") > 0
    assert stored_decisions(wallet.pk) == expected
    wallet.refresh_from_db()
    assert (wallet.balance, wallet.last_applied_seq) == (balance, 60)
    # The notification hook ran once, after the batch, with its whole range.
    hooks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wallet.applied")]
    assert hooks == [f"wallet.applied wallet={wallet.pk} owner={wallet.owner_id} seqs=1..60 "
                     f"balance={balance}"]  # fmt: skip

    before = stored_decisions(wallet.pk)
    again = services.transactions_apply(wallet_id=wallet.pk)
    assert again.decided == 0
    assert stored_decisions(wallet.pk) == before


def _drains_queued() -> int:
    """`wallets.drain` messages waiting in the broker's `high` queue."""
    from apps.core.redis import get_redis

    return sum(
        json.loads(raw)["headers"]["task"] == services.DRAIN_TASK
        for raw in get_redis().lrange(services.DRAIN_QUEUE, 0, -1)
    )


@pytest.fixture
def drain_signal_free() -> Iterator[None]:
    from apps.core.redis import get_redis

    get_redis().delete(*services.DRAIN.redis_keys())
    yield
    get_redis().delete(*services.DRAIN.redis_keys())


def test_accepts_wake_one_drain_until_it_has_finished(
    wallet: Wallet, drain_signal_free: None, django_capture_on_commit_callbacks: Any
) -> None:
    before = _drains_queued()
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            _accept(wallet, DEPOSIT, "1.00")
    # One drain message for the three: the later accepts asked it for another pass.
    assert _drains_queued() == before + 1
    # A pass began after those accepts (so it sees them), found them all, and the drain
    # ended: the next accept wakes a new one.
    assert services.transactions_drain() == 3
    with django_capture_on_commit_callbacks(execute=True):
        _accept(wallet, DEPOSIT, "1.00")
    assert _drains_queued() == before + 2
    # An accept that rolls back wakes nothing.
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        _accept(wallet, DEPOSIT, "1.00")
        raise RuntimeError
    assert _drains_queued() == before + 2


def test_an_accept_during_a_pass_gets_another_pass(wallet: Wallet, drain_signal_free: None) -> None:
    signal = services.DRAIN
    assert signal.notify()  # this caller publishes the drain
    signal.begin_pass()
    assert not signal.notify()  # an accept committed after the pass began
    assert signal.finish()  # ... so the drain goes again
    signal.begin_pass()
    assert not signal.finish()  # nothing since: the drain ends and frees the signal
    assert signal.notify()


def test_the_drain_matches_the_sequential_model_over_many_wallets(
    wallet: Wallet, drain_signal_free: None, caplog: Any
) -> None:
    rng = random.Random(5)
    wallets = [wallet] + [services.wallet_create(owner_id=wallet.owner_id) for _ in range(7)]
    accepted: dict[int, list[tuple[int, str, Decimal]]] = {w.pk: [] for w in wallets}
    for _ in range(240):
        target = rng.choice(wallets)
        kind = rng.choice([DEPOSIT, WITHDRAWAL])
        accepted[target.pk].append(_accept(target, kind, f"{rng.randint(1, 5000) / 100:.2f}"))
    with caplog.at_level(logging.DEBUG, logger="apps.wallets.services"):
        assert services.transactions_drain() == 240
    for target in wallets:
        balance, expected = sequential_model(accepted[target.pk])
        assert stored_decisions(target.pk) == expected
        target.refresh_from_db()
        assert (target.balance, target.last_applied_seq) == (balance, len(expected))
    hooks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wallet.applied")]
    assert len(hooks) == len(wallets)  # once per wallet, after the commit
    assert all(check.ok for check in selectors.wallet_verify(wallet_ids=list(accepted)))
    assert services.transactions_drain() == 0


def test_a_drain_pass_costs_the_same_statements_for_one_wallet_or_many(
    wallet: Wallet, drain_signal_free: None
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements(count: int) -> int:
        wallets = [services.wallet_create(owner_id=wallet.owner_id) for _ in range(count)]
        for target in wallets:
            _accept(target, DEPOSIT, "2.00")
            _accept(target, WITHDRAWAL, "1.00")
        with CaptureQueriesContext(connection) as queries:
            assert services.transactions_drain() == 2 * count
        return len(queries)

    assert statements(1) == statements(30)


def test_a_wallet_that_cannot_be_decided_does_not_hold_back_the_others(
    wallet: Wallet, drain_signal_free: None, monkeypatch: Any
) -> None:
    from tasks.models import OutboxMessage

    other = services.wallet_create(owner_id=wallet.owner_id)
    _accept(wallet, DEPOSIT, "3.00")
    _accept(other, DEPOSIT, "4.00")
    decide = services.transaction_decide

    def broken(target: Wallet, command: WalletTransaction) -> Any:
        if target.pk == wallet.pk:
            raise ZeroDivisionError("a bug")
        return decide(target, command)

    monkeypatch.setattr(services, "transaction_decide", broken)
    assert services.transactions_drain() == 1
    assert stored_decisions(other.pk) == [(1, "applied", "", Decimal("4.00"))]
    assert stored_decisions(wallet.pk) == [(1, "pending", "", None)]
    # Left to its own apply task, whose retries and dead letter are the task's.
    rows = OutboxMessage.objects.filter(task_name=services.APPLY_TASK)
    assert [row.args for row in rows] == [[wallet.pk]]
    monkeypatch.setattr(services, "transaction_decide", decide)
    assert services.transactions_apply(wallet_id=wallet.pk).decided == 1


class _Spinning(BaseException):
    """Not an Exception: the drain's own error handling must not catch it."""


def test_a_full_round_that_decides_nothing_ends_the_pass(
    wallet: Wallet, drain_signal_free: None, monkeypatch: Any
) -> None:
    # A full round of wallets that are pending but cannot move (their next transaction is
    # not there): without a guard the pass would find the same wallets again, forever.
    for _ in range(services.DRAIN_MAX_WALLETS):
        services.wallet_create(owner_id=wallet.owner_id)
    Wallet.objects.update(last_seq=F("last_seq") + 1)
    rounds = []
    real = services.apply_pending_keys

    def counted(**kwargs: Any) -> Any:
        rounds.append(1)
        if len(rounds) > 3:
            raise _Spinning
        return real(**kwargs)

    monkeypatch.setattr(services, "apply_pending_keys", counted)
    assert services.transactions_drain() == 0
    assert len(rounds) == 1


def test_the_task_time_limit_stops_the_drain(
    wallet: Wallet, drain_signal_free: None, monkeypatch: Any
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from tasks.models import OutboxMessage

    _accept(wallet, DEPOSIT, "3.00")

    def out_of_time(**kwargs: Any) -> Any:
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(services, "apply_pending_keys", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        services.transactions_drain()
    # Not mistaken for a broken pass: nothing was tried wallet by wallet or left to a task.
    assert stored_decisions(wallet.pk) == [(1, "pending", "", None)]
    assert not OutboxMessage.objects.filter(task_name=services.APPLY_TASK).exists()


def test_the_sweeper_wakes_a_drain_only_for_pending_wallets(
    wallet: Wallet, drain_signal_free: None
) -> None:
    before = _drains_queued()
    assert not services.wallets_sweep()  # nothing pending
    _accept(wallet, DEPOSIT, "1.00")  # its wake is lost (on_commit never runs here)
    assert services.wallets_sweep()
    assert _drains_queued() == before + 1
    assert not services.wallets_sweep()  # a drain is on its way: it asks for a pass
    assert services.transactions_drain() == 1
    assert not services.wallets_sweep()


def test_the_database_refuses_a_negative_balance_or_amount(wallet: Wallet) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.filter(pk=wallet.pk).update(balance=Decimal("-0.01"))
    with pytest.raises(IntegrityError), transaction.atomic():
        WalletTransaction.objects.create(wallet=wallet, seq=1, kind=DEPOSIT, amount=Decimal(0))
    with pytest.raises(IntegrityError), transaction.atomic():
        WalletTransaction.objects.create(
            wallet=wallet, seq=1, kind=DEPOSIT, amount=Decimal(1), balance_after=Decimal(-1)
        )


def test_the_service_rechecks_its_input(wallet: Wallet) -> None:
    from apps.core.errors import SurgeError

    for kind, amount in [(DEPOSIT, "0"), (DEPOSIT, "0.001"), ("gift", "1.00")]:
        with pytest.raises(SurgeError) as refused:
            services.transaction_accept(wallet_id=wallet.pk, kind=kind, amount=Decimal(amount))
        assert refused.value.code == "invalid"
    assert Wallet.objects.get(pk=wallet.pk).last_seq == 0
    with pytest.raises(SurgeError) as missing:
        services.transaction_accept(wallet_id=987654321, kind=DEPOSIT, amount=Decimal(1))
    assert (missing.value.code, missing.value.status) == ("not_found", 404)


def test_accepting_for_another_owner_is_a_404_that_leaves_no_trace(
    wallet: Wallet, django_user_model: Any
) -> None:
    from apps.core.errors import SurgeError
    from tasks.models import OutboxMessage

    bob = django_user_model.objects.create_user("bob")
    outbox_before = OutboxMessage.objects.count()
    with pytest.raises(SurgeError) as refused:
        services.transaction_accept(
            wallet_id=wallet.pk, owner_id=bob.pk, kind=DEPOSIT, amount=Decimal(1)
        )
    assert (refused.value.code, refused.value.status) == ("not_found", 404)
    # The seq taken under the lock went back with the transaction: no gap, no command.
    assert Wallet.objects.get(pk=wallet.pk).last_seq == 0
    assert not WalletTransaction.objects.filter(wallet=wallet).exists()
    assert OutboxMessage.objects.count() == outbox_before

    accepted = services.transaction_accept(
        wallet_id=wallet.pk, owner_id=wallet.owner_id, kind=DEPOSIT, amount=Decimal(1)
    )
    assert accepted.seq == 1


def test_verify_recomputes_the_balance_from_the_log(wallet: Wallet) -> None:
    for kind, amount in [(DEPOSIT, "20.00"), (WITHDRAWAL, "7.50"), (WITHDRAWAL, "99.00")]:
        _accept(wallet, kind, amount)
    services.transactions_apply(wallet_id=wallet.pk)
    empty = services.wallet_create(owner_id=wallet.owner_id)
    checks = selectors.wallet_verify(wallet_ids=[wallet.pk, empty.pk])
    assert [(c.wallet_id, c.expected_balance, c.decided_count, c.ok) for c in checks] == [
        (wallet.pk, Decimal("12.50"), 3, True),
        (empty.pk, Decimal("0.00"), 0, True),
    ]

    Wallet.objects.filter(pk=wallet.pk).update(balance=Decimal("13.00"))
    (check,) = selectors.wallet_verify(wallet_ids=[wallet.pk])
    assert (check.balance_ok, check.log_ok) == (False, True)
    assert check.balance - check.expected_balance == Decimal("0.50")


def test_admin_verify_action_reports_differences(wallet: Wallet, admin_client: Any) -> None:
    for kind, amount in [(DEPOSIT, "20.00"), (WITHDRAWAL, "5.00")]:
        _accept(wallet, kind, amount)
    services.transactions_apply(wallet_id=wallet.pk)
    url = "/admin/wallets/wallet/"

    def verify() -> list[str]:
        response = admin_client.post(
            url, {"action": "verify", "_selected_action": [wallet.pk]}, follow=True
        )
        assert response.status_code == 200
        return [str(m) for m in response.context["messages"]]

    assert verify() == [
        "1 wallet(s) verified: every balance equals applied deposits minus applied withdrawals."
    ]
    Wallet.objects.filter(pk=wallet.pk).update(balance=Decimal("14.00"), last_applied_seq=1)
    assert verify() == [
        f"Wallet {wallet.pk}: balance 14.00 but the log gives 15.00 (difference -1.00); "
        "last_applied_seq 1 but 2 decided transactions."
    ]

    page = admin_client.get(f"{url}{wallet.pk}/change/")
    assert page.status_code == 200
    assert b"Transactions (ordered by seq" in page.content
    assert admin_client.get("/admin/wallets/wallettransaction/").status_code == 200
