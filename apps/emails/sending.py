"""One pass of a priority's drain: claim a batch, send it over one SMTP connection, record
each result.

The three steps and why they are apart:

1. **Claim** (one short transaction): up to `EMAIL_BATCH_SIZE` due rows of the priority,
   `SELECT … FOR UPDATE SKIP LOCKED` (two workers never take the same row; a claim never
   waits behind another), moved to `sending` with a lease (`lease_until`), and committed.
   A row whose address is on the suppression list is moved to `suppressed` instead.
2. **Send** outside any transaction (an SMTP conversation is a remote call: holding a
   transaction across it would keep a connection idle in transaction for as long as the
   server takes): one connection for the whole batch, one message after another.
3. **Record** each result in its own short transaction, right after its send, and only if
   the row is still under this claim's lease (`status = sending AND lease_until = <ours>`).

The one double SMTP cannot close, and how it is bounded: the server has answered 250 to
the message's DATA and the worker dies before step 3 commits. The row is still `sending`
under a lease that runs out; then a later claim takes it again and sends it again, with
the `Message-ID` it was given when the row was created (receivers deduplicate on it).
Because each result is recorded before the next message is sent, that can only be the
one message in flight when the worker died, never the rest of its batch: those were
either recorded already or never handed to the server. And a live worker never sends under
a lease that could run out mid-send: before each message it checks that the lease has
at least the longest a send can take (`send_margin_s`) left, else it hands the rest back
unsent, so no second worker reclaims a row while its first is still sending it.
"""

from __future__ import annotations

import logging
import random
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import Email, EmailStatus, Suppression
from .statemachine import EMAIL

__all__ = ["Outcome", "batch_send", "claim", "retry_delay_s", "send_margin_s"]

logger = logging.getLogger(__name__)

S = EmailStatus
# SMTP commands one message takes, each waiting at most EMAIL_TIMEOUT for its reply
# (MAIL, RCPT, DATA, the body's end, and a RSET after a refusal).
COMMANDS_PER_MESSAGE = 5


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: `status` is the row's next status (`sent`, `deferred`,
    `bounced`, `failed`); `session` says the whole session failed (the connection, the
    login, MAIL FROM), so the rest of the batch is not tried on it."""

    status: str
    error: str = ""
    session: bool = False


def send_margin_s() -> float:
    """The longest one message's send may take: no send starts with less lease left."""
    return COMMANDS_PER_MESSAGE * float(settings.EMAIL_TIMEOUT) + 1.0


def retry_delay_s(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped, jittered over its upper
    half (not from zero like tasks' full jitter: a greylisting server answers 451 to a
    retry that comes back at once, so every retry waits at least half its step)."""
    base = float(settings.EMAIL_RETRY_BACKOFF_BASE_S)
    ceiling = min(float(settings.EMAIL_RETRY_BACKOFF_MAX_S), base * 2.0 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def address_key(address: str) -> str:
    """The suppression list's spelling of an address (one row per mailbox)."""
    return address.strip().lower()


def claim(*, priority: str, limit: int) -> list[Email]:
    """Take up to `limit` due rows of `priority` under a fresh lease (committed on return).

    Due: `queued` or `deferred` whose `next_attempt_at` has come, or `sending` whose lease
    ran out (its worker died: see the module docstring). Suppressed addresses are moved to
    `suppressed` here, so the list wins even over a mail queued before the address was put
    on it. Returns the rows to send, their `lease_until` and `attempts` as written.
    """
    now = timezone.now()
    lease_until = now + timedelta(seconds=float(settings.EMAIL_CLAIM_LEASE_S))
    with transaction.atomic():
        rows = list(
            Email.objects.select_for_update(skip_locked=True)
            .filter(
                Q(status__in=[S.QUEUED, S.DEFERRED], next_attempt_at__lte=now)
                | Q(status=S.SENDING, lease_until__lt=now),
                priority=priority,
            )
            .order_by("next_attempt_at", "id")[:limit]
        )
        if not rows:
            return []
        suppressed = set(
            Suppression.objects.filter(
                address__in={address_key(row.to) for row in rows}
            ).values_list("address", flat=True)
        )
        held = [row for row in rows if address_key(row.to) in suppressed]
        claimed = [row for row in rows if address_key(row.to) not in suppressed]
        for row in held:
            EMAIL.update(
                Email.objects.filter(pk=row.pk),
                current=row.status,
                target=S.SUPPRESSED,
                lease_until=None,
                last_error="The address is on the suppression list.",
            )
        for current in {row.status for row in claimed}:
            EMAIL.update(
                Email.objects.filter(pk__in=[r.pk for r in claimed if r.status == current]),
                current=current,
                target=S.SENDING,
                lease_until=lease_until,
                attempts=F("attempts") + 1,
            )
    for row in claimed:
        row.status, row.lease_until, row.attempts = S.SENDING, lease_until, row.attempts + 1
    return claimed


def message_bytes(email: Email) -> bytes:
    """The message as it goes on the wire, with the row's own Message-ID."""
    message = EmailMultiAlternatives(
        subject=email.subject,
        body=email.text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[email.to],
        headers={**email.headers, "Message-ID": email.message_id},
    )
    if email.html:
        message.attach_alternative(email.html, "text/html")
    # Django's MIME classes take `linesep` (SMTP wants CRLF); the stubs know only the base.
    return message.message().as_bytes(linesep="\r\n")  # type: ignore[call-arg]


def _connect() -> smtplib.SMTP:
    connection = smtplib.SMTP(
        settings.EMAIL_HOST, int(settings.EMAIL_PORT), timeout=float(settings.EMAIL_TIMEOUT)
    )
    try:
        connection.ehlo()
        if settings.EMAIL_USE_TLS:
            connection.starttls()
            connection.ehlo()
        if settings.EMAIL_HOST_USER:
            connection.login(settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD)
    except BaseException:
        connection.close()
        raise
    return connection


def _describe(code: int, message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return f"{code} {text}".strip()


def _by_code(code: int, error: str, *, permanent: str) -> Outcome:
    if 400 <= code < 500:
        return Outcome(S.DEFERRED, error)
    return Outcome(permanent, error)


def send_one(connection: smtplib.SMTP, email: Email) -> Outcome:
    """One message on an open connection. A refusal of the recipient decides the row
    (4xx: deferred; 5xx: bounced); a refusal of the content (after DATA) is not about the
    address (4xx: deferred; 5xx: failed, nobody suppressed); a refused MAIL FROM or a lost
    connection is the session's, not this recipient's."""
    try:
        connection.sendmail(settings.DEFAULT_FROM_EMAIL, [email.to], message_bytes(email))
    except smtplib.SMTPRecipientsRefused as exc:
        code, message = next(iter(exc.recipients.values()), (554, b"refused"))
        return _by_code(code, _describe(code, message), permanent=S.BOUNCED)
    except smtplib.SMTPSenderRefused as exc:
        return Outcome(S.DEFERRED, _describe(exc.smtp_code, exc.smtp_error), session=True)
    except smtplib.SMTPDataError as exc:
        return _by_code(exc.smtp_code, _describe(exc.smtp_code, exc.smtp_error), permanent=S.FAILED)
    except smtplib.SMTPResponseException as exc:
        error = _describe(exc.smtp_code, exc.smtp_error)
        return Outcome(S.DEFERRED, error, session=True)
    except (smtplib.SMTPException, OSError) as exc:  # disconnected, reset, timed out
        return Outcome(S.DEFERRED, f"connection: {exc!r}", session=True)
    return Outcome(S.SENT)


def record(email: Email, outcome: Outcome) -> bool:
    """Write one message's outcome, if the row is still under our lease; True if it was.

    A `deferred` past `EMAIL_MAX_ATTEMPTS` claims becomes `failed`. A `bounced` puts the
    address on the suppression list in the same transaction.
    """
    now = timezone.now()
    target = outcome.status
    fields: dict[str, Any] = {"lease_until": None, "last_error": outcome.error[:2000]}
    if target == S.DEFERRED:
        if email.attempts >= int(settings.EMAIL_MAX_ATTEMPTS):
            target = S.FAILED
        else:
            fields["next_attempt_at"] = now + timedelta(seconds=retry_delay_s(email.attempts))
    if target == S.SENT:
        fields["sent_at"] = now
    with transaction.atomic():
        moved = EMAIL.update(
            Email.objects.filter(pk=email.pk, lease_until=email.lease_until),
            current=S.SENDING,
            target=target,
            strict=False,
            **fields,
        )
        if target == S.BOUNCED:
            Suppression.objects.get_or_create(
                address=address_key(email.to), defaults={"reason": Suppression.Reason.BOUNCE}
            )
    if not moved:
        logger.warning("email %s: lease lost before its outcome %s was recorded", email.pk, target)
    return bool(moved)


def _hand_back(emails: list[Email]) -> None:
    """Rows this claim never handed to the server: back to `queued`, that claim uncounted."""
    if not emails:
        return
    with transaction.atomic():
        for email in emails:
            EMAIL.update(
                Email.objects.filter(pk=email.pk, lease_until=email.lease_until),
                current=S.SENDING,
                target=S.QUEUED,
                strict=False,
                lease_until=None,
                attempts=F("attempts") - 1,
            )


def _lease_left_s(email: Email, now: datetime) -> float:
    assert email.lease_until is not None
    return (email.lease_until - now).total_seconds()


def batch_send(emails: list[Email]) -> None:
    """Send claimed rows over one connection and record each (see the module docstring).

    A session failure (no connection, refused login or MAIL FROM, a connection lost
    mid-batch) fails this attempt of the message at hand and of every one not yet tried,
    each deferred with its backoff (so a broken server is not hammered), and suppresses
    no one.
    """
    if not emails:
        return
    try:
        connection = _connect()
    except (smtplib.SMTPException, OSError) as exc:
        error = f"session: {exc!r}"
        for email in emails:
            record(email, Outcome(S.DEFERRED, error, session=True))
        return
    try:
        for index, email in enumerate(emails):
            if _lease_left_s(email, timezone.now()) < send_margin_s():
                _hand_back(emails[index:])
                return
            outcome = send_one(connection, email)
            record(email, outcome)
            if outcome.session:
                for rest in emails[index + 1 :]:
                    record(rest, Outcome(S.DEFERRED, f"session: {outcome.error}", session=True))
                return
    finally:
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()
