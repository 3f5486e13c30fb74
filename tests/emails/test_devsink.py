"""The development SMTP sink as `make run` would run it: a real process that accepts mail
and shows it on the staff page."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from apps.emails import sending, services
from tests.conftest import LOG_DIR
from tests.harness import LiveProcess, free_port, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db]


def test_the_sink_catches_mail_and_the_staff_page_lists_it(
    live_env: dict[str, str], django_user_model: Any, client: Any
) -> None:
    port = free_port()
    sink = LiveProcess(
        "emails-devsink",
        ["python", "-m", "apps.emails.devsink", "--host", "127.0.0.1", "--port", str(port)],
        env=live_env,
        log_dir=LOG_DIR,
        ready=lambda p: "listening on" in p.log_text(),
    )
    sink.start()
    try:
        email = services.email_queue(
            to="new@example.com", template="welcome", context={"username": "newcomer"}
        )
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.sendmail("noreply@surge.localhost", [email.to], sending.message_bytes(email))
        wait_for(lambda: email.message_id in sink.log_text(), what="the sink's line")
    finally:
        sink.stop()
    page_url = "/emails/dev/caught/"
    assert client.get(page_url).status_code == 302  # staff only: to the admin login
    client.force_login(django_user_model.objects.create_user("op", password="pw", is_staff=True))
    page = client.get(page_url)
    assert page.status_code == 200
    assert b"Welcome to Surge, newcomer" in page.content and b"new@example.com" in page.content
