"""Workers keep their PostgreSQL connections across tasks (Celery's Django fixup would open a
new one for every task), and a connection that broke in between costs no task attempt."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from tasks.models import DeadLetter
from tasks.outbox import outbox_enqueue
from tests.toolkit_app.models import ProbeConnection

from ..harness import LiveProcess, wait_for

pytestmark = pytest.mark.live


def _run_one(token: str) -> ProbeConnection:
    """Publishes one probe and waits for its row, so the runs are strictly one by one."""
    before = ProbeConnection.objects.filter(token=token).count()
    outbox_enqueue("toolkit.probe_backend", args=[token])
    wait_for(
        lambda: ProbeConnection.objects.filter(token=token).count() == before + 1,
        timeout=30,
        what="the probe's run",
    )
    return ProbeConnection.objects.filter(token=token).order_by("-id").first()  # type: ignore[return-value]


def test_a_pool_process_reuses_its_connection_from_task_to_task(live_worker: LiveProcess) -> None:
    token = f"reuse-{uuid.uuid4().hex}"
    runs = [_run_one(token) for _ in range(8)]
    backends_by_process: dict[int, set[int]] = {}
    for run in runs:
        backends_by_process.setdefault(run.os_pid, set()).add(run.backend_pid)
    # Each pool process talked to PostgreSQL through one backend for all its tasks; with the
    # fixup's default every one of the 8 runs would have had a backend of its own.
    assert all(len(backends) == 1 for backends in backends_by_process.values()), backends_by_process
    assert len({run.backend_pid for run in runs}) <= 2  # the worker's concurrency


def test_a_connection_killed_between_tasks_costs_no_attempt(live_worker: LiveProcess) -> None:
    token = f"broken-{uuid.uuid4().hex}"
    warm = [_run_one(token) for _ in range(4)]
    killed = {run.backend_pid for run in warm}
    with connection.cursor() as cursor:
        for backend_pid in killed:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
    after = [_run_one(token) for _ in range(4)]
    # Every run after the kill found its connection dead before its first query (the health
    # check), reconnected, and succeeded at its first attempt.
    assert all(run.retries == 0 for run in after), [(r.backend_pid, r.retries) for r in after]
    assert not killed & {run.backend_pid for run in after}
    assert not DeadLetter.objects.exists()
