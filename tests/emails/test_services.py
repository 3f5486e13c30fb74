"""The emails services against a real SMTP server (aiosmtpd in this process): rendering and
bad input, the claim, and what each SMTP answer does to a row. The drain's passes are run
here directly; tests/emails/test_live.py runs them in real workers."""

from __future__ import annotations

import smtplib
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import SurgeError
from apps.emails import sending, services
from apps.emails.models import Email, EmailStatus, Suppression
from apps.emails.statemachine import EMAIL
from tasks.errors import IllegalTransition

from .conftest import SmtpSink

S = EmailStatus
pytestmark = pytest.mark.django_db


def queue(to: str = "ann@example.com", **kwargs: Any) -> Email:
    kwargs.setdefault("template", "generic")
    kwargs.setdefault("context", {"subject": "Hi", "body": "Hello there"})
    return services.email_queue(to=to, **kwargs)


def fields_of(exc: pytest.ExceptionInfo[SurgeError]) -> set[str]:
    return set(exc.value.fields or {})


# --- Rendering and bad input ----------------------------------------------------------


def test_templates_render_text_and_html() -> None:
    welcome = queue(template="welcome", context={"username": "ann"})
    assert welcome.subject == "Welcome to Surge, ann"
    assert "ann" in welcome.text and "<strong>ann</strong>" in welcome.html
    order = queue(template="order_confirmation", context={"order_id": 7, "username": "<b>"})
    assert order.subject == "Order 7 confirmed"
    assert "Hello <b>," in order.text  # text is not HTML: nothing escaped
    assert "&lt;b&gt;" in order.html  # HTML is
    generic = queue()
    assert (generic.subject, generic.text) == ("Hi", "Hello there\n")
    assert generic.message_id.startswith("<") and generic.message_id.endswith("@surge.localhost>")
    assert generic.status == S.QUEUED and generic.priority == "normal"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"to": "not-an-address"}, "to"),
        ({"to": "ann@example.com\r\nBcc: all@example.com"}, "to"),
        ({"to": ""}, "to"),
        ({"context": {"subject": "Hi\r\nBcc: x@example.com", "body": "b"}}, "subject"),
        ({"context": {"subject": "Hi", "body": "b"}, "headers": {"X-A": "1\nX-B: 2"}}, "headers"),
        ({"template": "nope"}, "template"),
        ({"template": "../base"}, "template"),
        ({"context": {"body": "no subject"}}, "context"),
        ({"context": ["not", "an", "object"]}, "context"),
        ({"priority": "urgent"}, "priority"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_creates_nothing(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(SurgeError) as exc:
        queue(**kwargs)
    assert exc.value.status == 400 and fields_of(exc) == {field}
    assert not Email.objects.exists()


def test_a_template_that_fails_to_render_is_a_400(settings: Any, tmp_path: Any) -> None:
    (tmp_path / "emails").mkdir()
    (tmp_path / "emails" / "broken.txt").write_text("{% if %}")
    (tmp_path / "emails" / "raises.txt").write_text("{{ n|divisibleby:0 }}")
    (tmp_path / "emails" / "raises.subject.txt").write_text("s")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    for name in ("broken", "raises"):
        with pytest.raises(SurgeError) as exc:
            queue(template=name, context={"n": 3})
        assert fields_of(exc) == {"template"}, name
    assert not Email.objects.exists()


def test_a_suppressed_address_is_queued_as_suppressed() -> None:
    services.suppression_add(address="Ann@Example.com", reason="unsubscribe")
    assert queue(to="ann@EXAMPLE.com").status == S.SUPPRESSED


def test_the_status_table_refuses_illegal_moves() -> None:
    email = queue()
    with pytest.raises(IllegalTransition):
        EMAIL.update(Email.objects.filter(pk=email.pk), current=S.QUEUED, target=S.SENT)
    with pytest.raises(IllegalTransition):
        EMAIL.check(S.SENT, S.SENDING)
    assert EMAIL.terminal == {S.SENT, S.BOUNCED, S.FAILED, S.SUPPRESSED}


# --- The claim ----------------------------------------------------------------------------


def test_the_claim_takes_due_rows_of_its_priority_under_a_lease() -> None:
    normal = [queue(to=f"n{i}@example.com") for i in range(3)]
    bulk = queue(to="b@example.com", priority="bulk")
    later = queue(to="later@example.com")
    Email.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    claimed = sending.claim(priority="normal", limit=2)
    assert [e.pk for e in claimed] == [normal[0].pk, normal[1].pk]
    assert all(e.status == S.SENDING and e.attempts == 1 for e in claimed)
    rest = sending.claim(priority="normal", limit=10)
    assert [e.pk for e in rest] == [normal[2].pk]  # claimed rows are not claimed twice
    assert sending.claim(priority="normal", limit=10) == []
    assert [e.pk for e in sending.claim(priority="bulk", limit=10)] == [bulk.pk]
    # A lease that ran out (its worker died) is claimed again, as a new attempt.
    Email.objects.filter(pk=normal[0].pk).update(lease_until=timezone.now() - timedelta(1))
    again = sending.claim(priority="normal", limit=10)
    assert [(e.pk, e.attempts) for e in again] == [(normal[0].pk, 2)]


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_skip_locked_rows_instead_of_waiting() -> None:
    ids = {queue(to=f"c{i}@example.com").pk for i in range(6)}
    locked = threading.Event()
    release = threading.Event()

    def hold_two() -> None:
        with transaction.atomic():
            list(Email.objects.select_for_update().filter(pk__in=sorted(ids)[:2]))
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_two)
    holder.start()
    try:
        assert locked.wait(10)
        claimed = {e.pk for e in sending.claim(priority="normal", limit=10)}
    finally:
        release.set()
        holder.join()
    assert claimed == set(sorted(ids)[2:])


def test_the_claim_moves_a_suppressed_address_out() -> None:
    email = queue(to="gone@example.com")
    services.suppression_add(address="gone@example.com", reason="complaint")
    assert sending.claim(priority="normal", limit=10) == []
    assert Email.objects.get(pk=email.pk).status == S.SUPPRESSED


# --- Sending and recording -----------------------------------------------------------------


def test_each_smtp_answer_decides_its_row(smtp_sink: SmtpSink, settings: Any) -> None:
    settings.EMAIL_RETRY_BACKOFF_BASE_S = 60
    smtp_sink.refuse_once["later@example.com"] = "451 4.7.1 Try again later"
    smtp_sink.refuse["gone@example.com"] = "550 5.1.1 No such user"
    ok, later, gone = (queue(to=f"{n}@example.com") for n in ("ok", "later", "gone"))
    assert services.emails_send_pass(priority="normal") == 3
    rows = {e.pk: e for e in Email.objects.all()}
    assert rows[ok.pk].status == S.SENT and rows[ok.pk].sent_at is not None
    assert rows[later.pk].status == S.DEFERRED and rows[later.pk].last_error.startswith("451")
    assert rows[later.pk].next_attempt_at > timezone.now() + timedelta(seconds=29)
    assert rows[gone.pk].status == S.BOUNCED and rows[gone.pk].last_error.startswith("550")
    assert Suppression.objects.get(address="gone@example.com").reason == "bounce"
    assert [a.to for a in smtp_sink.snapshot()] == ["ok@example.com"]
    assert smtp_sink.snapshot()[0].message_id == ok.message_id
    # The retry, once due, arrives with the row's Message-ID.
    Email.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now())
    assert services.emails_send_pass(priority="normal") == 1
    row = Email.objects.get(pk=later.pk)
    assert (row.status, row.attempts) == (S.SENT, 2)
    assert [a.message_id for a in smtp_sink.received_by("later@example.com")] == [later.message_id]


def test_retries_end_in_failed_after_the_last_attempt(smtp_sink: SmtpSink, settings: Any) -> None:
    settings.EMAIL_MAX_ATTEMPTS = 2
    smtp_sink.refuse["busy@example.com"] = "452 4.2.2 Mailbox full"
    email = queue(to="busy@example.com")
    for _ in range(2):
        Email.objects.filter(pk=email.pk).update(next_attempt_at=timezone.now())
        services.emails_send_pass(priority="normal")
    row = Email.objects.get(pk=email.pk)
    assert (row.status, row.attempts) == (S.FAILED, 2)
    assert not Suppression.objects.exists()


def test_a_session_failure_suppresses_no_one(smtp_sink: SmtpSink, settings: Any) -> None:
    settings.EMAIL_HOST_USER = "nobody"  # the sink offers no AUTH: login fails for the session
    emails = [queue(to=f"s{i}@example.com") for i in range(3)]
    assert services.emails_send_pass(priority="normal") == 3
    rows = Email.objects.filter(pk__in=[e.pk for e in emails])
    assert {r.status for r in rows} == {S.DEFERRED}
    assert all(r.last_error.startswith("session:") for r in rows)
    assert not Suppression.objects.exists() and smtp_sink.snapshot() == []


def test_a_refused_mail_from_fails_the_batch_and_suppresses_no_one(
    smtp_sink: SmtpSink, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse_sender(*args: Any) -> str:
        return "550 5.7.1 Relaying denied"

    monkeypatch.setattr(smtp_sink, "handle_MAIL", refuse_sender, raising=False)
    emails = [queue(to=f"m{i}@example.com") for i in range(2)]
    services.emails_send_pass(priority="normal")
    rows = Email.objects.filter(pk__in=[e.pk for e in emails])
    assert {r.status for r in rows} == {S.DEFERRED}
    assert all("550 5.7.1" in r.last_error for r in rows)
    assert not Suppression.objects.exists() and smtp_sink.snapshot() == []


def test_no_server_defers_the_batch(settings: Any) -> None:
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1.0
    email = queue()
    services.emails_send_pass(priority="normal")
    row = Email.objects.get(pk=email.pk)
    assert row.status == S.DEFERRED and row.last_error.startswith("session:")


def test_a_short_lease_hands_the_batch_back_unsent(smtp_sink: SmtpSink, settings: Any) -> None:
    settings.EMAIL_CLAIM_LEASE_S = 1.0  # less than one send may take: nothing is sent
    email = queue()
    services.emails_send_pass(priority="normal")
    row = Email.objects.get(pk=email.pk)
    assert (row.status, row.attempts, row.lease_until) == (S.QUEUED, 0, None)
    assert smtp_sink.snapshot() == []


def test_an_outcome_is_not_recorded_once_the_lease_is_lost(smtp_sink: SmtpSink) -> None:
    queue()
    [email] = sending.claim(priority="normal", limit=1)
    Email.objects.filter(pk=email.pk).update(lease_until=timezone.now() + timedelta(hours=1))
    assert not sending.record(email, sending.Outcome(S.SENT))
    assert Email.objects.get(pk=email.pk).status == S.SENDING


def test_the_message_carries_the_rows_message_id(smtp_sink: SmtpSink) -> None:
    email = queue(headers={"X-Campaign": "7"})
    with smtplib.SMTP("127.0.0.1", smtp_sink.port) as client:
        client.sendmail("a@example.com", [email.to], sending.message_bytes(email))
    [arrival] = smtp_sink.snapshot()
    assert arrival.message_id == email.message_id and arrival.headers["X-Campaign"] == "7"
