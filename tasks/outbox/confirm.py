"""Confirmation by the worker: a row is done when its task finished for good."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals, states
from django.db import connection

from ..failures import on_message_done
from ..models import OutboxMessage
from .publish import TASK_ID_PREFIX

logger = logging.getLogger(__name__)


def outbox_id_of(task_id: str | None) -> int | None:
    if task_id and task_id.startswith(TASK_ID_PREFIX):
        try:
            return int(task_id[len(TASK_ID_PREFIX) :])
        except ValueError:
            return None
    return None


_CONFIRM = (
    f"UPDATE {OutboxMessage._meta.db_table} SET done_at = STATEMENT_TIMESTAMP() "
    "WHERE id = %s AND done_at IS NULL"
)


def outbox_confirm(*, outbox_id: int | None = None, task_id: str | None = None) -> bool:
    """Marks the row done: its task finished for good, nothing will republish it."""
    if outbox_id is None:
        outbox_id = outbox_id_of(task_id)
    if outbox_id is None:
        return False
    # By hand: the worker runs this after every task from the outbox.
    with connection.cursor() as cursor:
        cursor.execute(_CONFIRM, [outbox_id])
        return bool(cursor.rowcount)


# Finished for good. RETRY is not (a retry message is on its way), nor is REJECTED (put
# back on the queue, or dropped by Celery on purpose: rare, and the sweeper's timeout
# will tell).
_DONE_STATES = frozenset({states.SUCCESS, states.FAILURE, states.IGNORED})


@on_message_done
def _confirm_done_elsewhere(task_id: str) -> None:
    """A message done where no task_postrun runs (tasks.failures.message_done)."""
    outbox_confirm(task_id=task_id)


@signals.task_postrun.connect
def _confirm_after_run(task: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or state not in _DONE_STATES:
        return
    request = task.request
    outbox_id = getattr(request, "outbox_id", None) or outbox_id_of(request.id)
    if not outbox_id:
        return  # not from the outbox: nothing to write
    try:
        outbox_confirm(outbox_id=int(outbox_id))
    except Exception:
        # Unconfirmed means published again later: a duplicate the consumer ignores.
        logger.warning("outbox row %s: done not recorded", outbox_id, exc_info=True)
