"""X-Request-ID: echoed or generated, and carried into the worker that does the work."""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from rest_framework.test import APIClient

from apps.ops.models import Ping
from tasks.context import RequestIdLogFilter, reset_request_id, set_request_id

from ..harness import ApiClient, LiveProcess, wait_for


@pytest.mark.django_db
def test_echoed_when_sent_and_safe() -> None:
    response = APIClient().get("/healthz", HTTP_X_REQUEST_ID="abc-123.x:y")
    assert response["X-Request-ID"] == "abc-123.x:y"


@pytest.mark.django_db
def test_generated_when_missing_or_unsafe() -> None:
    generated = APIClient().get("/healthz")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = APIClient().get("/healthz", HTTP_X_REQUEST_ID="bad id\twith spaces")
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe["X-Request-ID"])
    too_long = APIClient().get("/healthz", HTTP_X_REQUEST_ID="a" * 129)
    assert too_long["X-Request-ID"] != "a" * 129


@pytest.mark.django_db
def test_on_error_responses_too() -> None:
    response = APIClient().get("/api/nowhere/", HTTP_X_REQUEST_ID="rid-404")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "rid-404"


def test_log_records_carry_the_current_id() -> None:
    record = logging.makeLogRecord({"msg": "x"})
    token = set_request_id("rid-log")
    try:
        RequestIdLogFilter().filter(record)
    finally:
        reset_request_id(token)
    assert record.request_id == "rid-log"


@pytest.mark.live
def test_request_id_reaches_the_worker(api: ApiClient, live_worker: LiveProcess) -> None:
    user = api.register()
    request_id = f"e2e-{uuid.uuid4().hex}"
    response = user.post(
        "/api/ops/pings/", json={"message": "hello"}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == request_id
    assert response.json()["request_id"] == request_id
    ping_id = response.json()["id"]

    ping = wait_for(
        lambda: Ping.objects.filter(pk=ping_id, ponged_at__isnull=False).first(),
        what="the worker to answer the ping",
    )
    assert ping.pong_request_id == request_id
    line = wait_for(
        lambda: next(
            (ln for ln in live_worker.log_text().splitlines() if f"pong ping_id={ping_id}" in ln),
            None,
        ),
        what="the worker's log line",
    )
    assert f"rid={request_id}" in line
    detail = user.get(f"/api/ops/pings/{ping_id}/").json()
    assert detail["pong_request_id"] == request_id
