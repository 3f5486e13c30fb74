"""Thin Celery entry points of the lab. Registered only where the lab is installed
(`LAB_ENABLED`: the bench stack's workers, the lab's live tests); the bench's task names
(`ops.*`) are kept from when these lived in apps/ops, so bench/ sends what it always did."""

from __future__ import annotations

from celery import shared_task

from apps.core.redis import get_redis
from tasks.base import SurgeTask

from . import services


@shared_task(name="ops.noop")
def noop() -> None:
    """Does nothing: the bench's measure of raw Celery throughput."""


@shared_task(name="ops.bench_ack")
def bench_ack(list_key: str) -> None:
    """Pushes one item onto a Redis list, so the bench can count completions."""
    get_redis().rpush(list_key, 1)


@shared_task(name="ops.bench_ack_surge", base=SurgeTask)
def bench_ack_surge(list_key: str) -> None:
    """`bench_ack` on the Surge base task: the bench's measure of the toolkit's overhead."""
    get_redis().rpush(list_key, 1)


@shared_task(name="lab.wallets_apply_naive", base=SurgeTask)
def wallets_apply_naive(transaction_id: int) -> None:
    """The naive wallet variant's applier: one transaction, in delivery order (wrong)."""
    services.transaction_apply_naive(transaction_id=transaction_id)
