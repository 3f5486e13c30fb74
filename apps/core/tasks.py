from celery import shared_task

from . import idempotency


@shared_task(name="core.purge_idempotency_records")
def purge_idempotency_records() -> int:
    return idempotency.purge_expired()
