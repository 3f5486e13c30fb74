"""Unsubscribe: signed per-recipient links in every bulk mail (RFC 2369 + RFC 8058); a GET
shows a page and changes nothing, a POST (the one-click) suppresses at once, idempotently,
with no login and no CSRF token."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from apps.emails import services
from apps.emails.models import Email, Suppression

from .conftest import SmtpSink

pytestmark = pytest.mark.django_db


def queue(to: str, priority: str) -> Email:
    return services.email_queue(
        to=to, template="generic", context={"subject": "News", "body": "B"}, priority=priority
    )


def link_of(email: Email) -> str:
    match = re.fullmatch(
        r"<https?://[^/]+(/emails/unsubscribe/[^/]+/)>", email.headers["List-Unsubscribe"]
    )
    assert match, email.headers
    return match.group(1)


def test_bulk_mail_carries_both_headers_on_the_wire(smtp_sink: SmtpSink) -> None:
    bulk = queue("Ann@Example.com", "bulk")
    assert bulk.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Unsubscribe" not in queue("bob@example.com", "high").headers
    services.emails_send_pass(priority="bulk")
    [arrival] = smtp_sink.snapshot()
    # Long header lines are folded on the wire (RFC 5322 2.2.3); unfolded, the same URL.
    unfolded = arrival.headers["List-Unsubscribe"].replace("\r\n", "").strip()
    assert unfolded == bulk.headers["List-Unsubscribe"]
    assert arrival.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_get_suppresses_nothing_and_the_one_click_post_suppresses_at_once() -> None:
    link = link_of(queue("ann@example.com", "bulk"))
    client = Client(enforce_csrf_checks=True)  # as a mail client: no session, no CSRF token
    page = client.get(link)
    assert page.status_code == 200 and b"ann@example.com" in page.content
    assert not Suppression.objects.exists()
    for _ in range(2):  # idempotent
        done = client.post(
            link, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
        )
        assert done.status_code == 200, done.content
    assert list(Suppression.objects.values_list("address", "reason")) == [
        ("ann@example.com", "unsubscribe")
    ]
    # The next mail to the address is never sent.
    assert queue("ANN@example.com", "bulk").status == "suppressed"


def test_a_token_this_site_did_not_sign_changes_nothing(settings: Any) -> None:
    link = link_of(queue("ann@example.com", "bulk"))
    forged = link.replace("/unsubscribe/", "/unsubscribe/x")
    client = Client(enforce_csrf_checks=True)
    assert client.get(forged).status_code == 404
    assert client.post(forged).status_code == 404
    assert services.unsubscribe_address(token="bob@example.com") is None
    assert not Suppression.objects.exists()
