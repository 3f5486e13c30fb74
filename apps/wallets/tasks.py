"""Thin Celery entry points of the wallets app."""

from __future__ import annotations

from celery import shared_task

from tasks.base import SurgeTask

from . import services


@shared_task(name="wallets.apply", base=SurgeTask)
def apply(wallet_id: int) -> None:
    """Decide the wallet's pending transactions in seq order (any delivery, any count)."""
    services.transactions_apply(wallet_id=wallet_id)


@shared_task(name="wallets.drain", base=SurgeTask)
def drain() -> None:
    """Decide every wallet's pending transactions, pass after pass, while accepts ask for
    more (one message wakes it, see services.transactions_drain)."""
    services.transactions_drain()


@shared_task(name="wallets.sweep", ignore_result=True)
def sweep() -> None:
    """Beat: wake a drain when a wallet has pending transactions (a lost wake's net)."""
    services.wallets_sweep()
