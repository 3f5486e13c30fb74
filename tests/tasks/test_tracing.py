"""Tracing: one request id, every event it caused, in time order, in the admin."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import tracing
from tasks.context import reset_request_id, set_request_id
from tasks.models import TraceEvent

from ..harness import ApiClient, LiveProcess, wait_for


@pytest.mark.django_db
def test_nothing_is_recorded_without_a_request_id() -> None:
    tracing.record("task.started", "x")
    assert TraceEvent.objects.count() == 0


@pytest.mark.django_db
def test_record_and_prune() -> None:
    token = set_request_id("rid-1")
    try:
        tracing.record("outbox.enqueued", "a.b", detail={"n": 1})
    finally:
        reset_request_id(token)
    tracing.record("task.started", "a.b", request_id="rid-1")
    assert [e.kind for e in tracing.trace_for("rid-1")] == ["outbox.enqueued", "task.started"]
    TraceEvent.objects.filter(kind="outbox.enqueued").update(at=timezone.now() - timedelta(days=30))
    assert tracing.trace_for("rid-1")[0].kind == "outbox.enqueued"  # time order
    assert tracing.trace_prune(older_than_days=7) == 1
    assert TraceEvent.objects.count() == 1


@pytest.mark.django_db
def test_buffered_mode_writes_in_one_batch(settings, django_assert_num_queries) -> None:
    settings.TRACE_FLUSH = "thread"
    tracing._buffer.clear()
    tracing._flusher_pid = -1  # pretend the flusher runs, so only flush() writes here
    tracing._ensure_flusher = lambda: None  # type: ignore[assignment]
    try:
        for index in range(20):
            tracing.record("task.started", f"t{index}", request_id="rid-batch")
        assert TraceEvent.objects.count() == 0
        with django_assert_num_queries(3):  # savepoint, one INSERT, release
            assert tracing.flush() == 20
    finally:
        del tracing._ensure_flusher
    assert TraceEvent.objects.filter(request_id="rid-batch").count() == 20


@pytest.mark.live
def test_a_request_and_its_task_in_the_trace_view(
    api: ApiClient, live_worker: LiveProcess, admin_client
) -> None:
    user = api.register()
    request_id = f"trace-{uuid.uuid4().hex}"
    response = user.post(
        "/api/ops/pings/", json={"message": "t"}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 202

    def kinds() -> list[str]:
        return [e.kind for e in tracing.trace_for(request_id)]

    expected = [
        "http.request",
        "outbox.enqueued",
        "outbox.published",
        "task.started",
        "task.succeeded",
    ]
    # Each process flushes its own events in the background: wait for all of them.
    wait_for(lambda: kinds() == expected, what=f"the trace {expected}")
    http = tracing.trace_for(request_id)[0]
    assert http.name == "POST /api/ops/pings/"
    assert http.detail["status"] == 202

    page = admin_client.get("/admin/tasks/traceevent/trace/", {"request_id": request_id})
    assert page.status_code == 200
    body = page.content.decode()
    assert "POST /api/ops/pings/" in body and "ops.pong" in body
    assert body.index("http.request") < body.index("task.started") < body.index("task.succeeded")
