"""tasks.failures: what SurgeTask and the outbox report reaches the dead letters and the
outbox's confirmation, which register themselves (neither reporter imports them)."""

from __future__ import annotations

import pytest

from tasks.failures import TaskFailure, message_done, record_failure
from tasks.models import DeadLetter, OutboxMessage
from tasks.outbox import TASK_ID_PREFIX


def _failure(task_id: str) -> TaskFailure:
    return TaskFailure(
        task_name="toolkit.probe_flaky",
        task_id=task_id,
        message_id=f"msg-{task_id}",
        args=[1],
        kwargs={"k": "v"},
        queue="high",
        reason="retries_exhausted",
        exception_class="tasks.errors.Transient",
        exception_message="down",
        traceback="",
        request_id="rid-failure",
        attempts=3,
        first_failed_at=None,
    )


@pytest.mark.django_db
def test_a_reported_failure_is_one_dead_letter() -> None:
    record_failure(_failure("t-reported"))
    record_failure(_failure("t-reported"))  # reported again (a redelivery): the same row
    dead = DeadLetter.objects.get(task_id="t-reported")
    assert (dead.task_name, dead.message_id, dead.args, dead.kwargs, dead.queue) == (
        "toolkit.probe_flaky",
        "msg-t-reported",
        [1],
        {"k": "v"},
        "high",
    )
    assert (dead.reason, dead.attempts, dead.request_id) == ("retries_exhausted", 3, "rid-failure")
    assert DeadLetter.objects.count() == 1


@pytest.mark.django_db
def test_a_message_done_elsewhere_confirms_its_outbox_row() -> None:
    row = OutboxMessage.objects.create(task_name="toolkit.noop")
    other = OutboxMessage.objects.create(task_name="toolkit.noop")
    message_done(f"{TASK_ID_PREFIX}{row.pk}")
    message_done("not-from-the-outbox")  # nothing to confirm, no error
    row.refresh_from_db()
    other.refresh_from_db()
    assert row.done_at is not None
    assert other.done_at is None
