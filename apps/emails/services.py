"""Every write of the emails app: queue a mail, resend one, suppress an address, and the
drains that send what is queued.

Why a drain and not the outbox (docs/architecture.md, "Which mechanism when"): a queued
`Email` row is itself the durable record of the work, and a campaign writes thousands of
them; what sends them wants batches (one SMTP connection for many messages), not one task
per row. So each priority has a drain (`DRAINS`) on its own queue — `high` on `high`
(served by `worker_high` too), `normal` on `default`, `bulk` on `bulk` — and its own Redis
keys: a bulk backlog can never hold the flag, the queue or the worker slot a high mail
needs. `email_queue` wakes the row's drain after its commit; `emails_sweep` (beat) wakes a
drain whose rows are due (a lost wake, a retry whose backoff has passed, a lease that ran
out under a dead worker).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.errors import ErrorCode, SurgeError
from tasks.base import queue_time_limits
from tasks.context import get_request_id
from tasks.drain import Drain

from . import rendering, sending
from .models import Email, EmailStatus, Priority, Suppression

__all__ = [
    "DRAINS",
    "email_order_confirmation",
    "email_queue",
    "email_resend",
    "email_welcome",
    "emails_drain",
    "emails_sweep",
    "suppression_add",
    "unsubscribe",
    "unsubscribe_address",
    "unsubscribe_headers",
    "unsubscribe_token",
]

logger = logging.getLogger(__name__)

S = EmailStatus
# The Celery queue of each priority's drain (config/celery.py's queues).
DRAIN_QUEUES = {Priority.HIGH: "high", Priority.NORMAL: "default", Priority.BULK: "bulk"}
# Unsubscribe tokens are signed with this salt, so no other signed value of the site is one.
UNSUBSCRIBE_SALT = "emails.unsubscribe"
# How long one drain message runs passes before it hands over to a fresh one.
DRAIN_BUDGET_S = 20.0


def _drain_budget(queue: str) -> Any:
    # Well inside the queue's soft time limit (which a short visibility timeout shrinks):
    # the drain hands over between batches, it is never cut off mid-send.
    return lambda: min(DRAIN_BUDGET_S, queue_time_limits(queue)[0] / 3)


def _drain_lease_ms() -> float:
    # A pass is a claim, a batch's sends and its records. A flag that lapses during a long
    # pass only lets a second chain run alongside (claims never overlap: SKIP LOCKED and
    # the lease); a short one means a chain that died with its worker is replaced soon.
    return max(10.0, 2 * sending.send_margin_s()) * 1000


DRAINS: dict[str, Drain] = {
    priority: Drain(
        f"emails-{priority}",
        task=f"emails.drain_{priority}",
        queue=queue,
        keyed=False,
        lease_ms=_drain_lease_ms,
        budget_s=_drain_budget(queue),
    )
    for priority, queue in DRAIN_QUEUES.items()
}


def _invalid(field: str, message: str) -> SurgeError:
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def message_id_new() -> str:
    """A Message-ID for a new row, in the sender's own domain (RFC 5322 3.6.4)."""
    sender = str(settings.DEFAULT_FROM_EMAIL).rstrip(">")
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<{uuid.uuid4().hex}@{domain}>"


def address_suppressed(address: str) -> bool:
    return Suppression.objects.filter(address=sending.address_key(address)).exists()


def email_queue(
    *,
    to: Any,
    template: Any,
    context: Any = None,
    priority: Any = Priority.NORMAL,
    headers: dict[str, str] | None = None,
) -> Email:
    """Render `template` for `to` and queue it at `priority`; the row's drain sends it.

    Everything is checked before the row exists (the address, CR/LF in it or in the
    subject or a header, the template and its rendering): bad input is a 400 naming the
    field, never a row. An address on the suppression list gets a row in `suppressed`
    (the caller sees why nothing arrives), never a send. May be called inside the caller's
    transaction (an order's confirmation): the row commits, and the drain wakes, with it.
    """
    address = rendering.address_check(to)
    if priority not in Priority.values:
        raise _invalid("priority", f"One of: {', '.join(Priority.values)}.")
    rendered = rendering.render(template=template, context=context)
    extra = {
        rendering.header_check(str(name), field="headers"): rendering.header_check(
            str(value), field="headers"
        )
        for name, value in (headers or {}).items()
    }
    if priority == Priority.BULK:
        extra.update(unsubscribe_headers(address))
    now = timezone.now()
    with transaction.atomic():
        email = Email.objects.create(
            to=address,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            headers=extra,
            priority=priority,
            status=S.SUPPRESSED if address_suppressed(address) else S.QUEUED,
            message_id=message_id_new(),
            request_id=get_request_id() or "",
            next_attempt_at=now,
        )
        if email.status == S.QUEUED:
            DRAINS[priority].wake()
    return email


def _transactional(*, to: str, template: str, context: dict[str, Any]) -> Email | None:
    """A mail another app's write asks for, in its transaction: a bad address (say, one
    stored before addresses were checked) costs the mail, never the caller's write."""
    if not to:
        return None
    try:
        return email_queue(to=to, template=template, context=context, priority=Priority.HIGH)
    except SurgeError as exc:
        logger.warning("%s mail to %r not queued: %s", template, to, exc.fields)
        return None


def email_welcome(*, user_id: int) -> Email | None:
    """Registration's welcome mail (`high`), when the user gave an address."""
    user = get_user_model().objects.filter(pk=user_id).values("email", "username").first()
    if user is None:
        return None
    return _transactional(
        to=user["email"], template="welcome", context={"username": user["username"]}
    )


def email_order_confirmation(*, order_id: int) -> Email | None:
    """The order confirmation (`high`), called by the orders app at `paid -> confirmed`,
    in that transition's transaction (so the mail exists exactly when the order is
    confirmed). Reads only the order's owner and total."""
    from apps.orders.models import Order  # the orders app imports this module

    order = Order.objects.filter(pk=order_id).values("total", "user__email", "user__username")
    row = order.first()
    if row is None:
        return None
    return _transactional(
        to=row["user__email"],
        template="order_confirmation",
        context={
            "order_id": order_id,
            "total": str(row["total"]),
            "username": row["user__username"],
        },
    )


def email_resend(*, email_id: int) -> Email | None:
    """The admin's resend: a new row with the same content (and a Message-ID of its own:
    it is a new message, not a repeat of one the server may have), queued at once. None
    when the row is gone."""
    original = Email.objects.filter(pk=email_id).first()
    if original is None:
        return None
    with transaction.atomic():
        email = Email.objects.create(
            to=original.to,
            subject=original.subject,
            text=original.text,
            html=original.html,
            headers=original.headers,
            priority=original.priority,
            status=S.SUPPRESSED if address_suppressed(original.to) else S.QUEUED,
            message_id=message_id_new(),
            request_id=get_request_id() or "",
            next_attempt_at=timezone.now(),
        )
        if email.status == S.QUEUED:
            DRAINS[email.priority].wake()
    return email


def unsubscribe_token(address: str) -> str:
    """A signed, per-recipient token for the unsubscribe link. It never expires: a link in
    an old mail must still work (RFC 8058 asks senders to honour it)."""
    return signing.dumps(sending.address_key(address), salt=UNSUBSCRIBE_SALT, compress=True)


def unsubscribe_address(*, token: str) -> str | None:
    """The address a token was made for, or None for a token this site did not sign."""
    try:
        address = signing.loads(token, salt=UNSUBSCRIBE_SALT)
    except signing.BadSignature:
        return None
    return address if isinstance(address, str) else None


def unsubscribe_headers(address: str) -> dict[str, str]:
    """RFC 2369 `List-Unsubscribe` and RFC 8058's one-click `List-Unsubscribe-Post`: a mail
    client POSTs `List-Unsubscribe=One-Click` to the URL, no login, no page."""
    url = f"{settings.WEB_BASE_URL.rstrip('/')}/emails/unsubscribe/{unsubscribe_token(address)}/"
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def unsubscribe(*, token: str) -> str | None:
    """The one-click: suppresses the token's address at once (idempotent); its address,
    or None for a bad token. The next claim of any mail to it moves that mail to
    `suppressed`, and nothing new is sent to it."""
    address = unsubscribe_address(token=token)
    if address is not None:
        suppression_add(address=address, reason=Suppression.Reason.UNSUBSCRIBE)
    return address


def suppression_add(*, address: str, reason: str) -> Suppression:
    """Put `address` on the suppression list (idempotent: the first reason stays)."""
    suppression, _ = Suppression.objects.get_or_create(
        address=sending.address_key(address), defaults={"reason": reason}
    )
    return suppression


def emails_send_pass(*, priority: str) -> int:
    """One pass of `priority`'s drain: one claimed batch, sent and recorded (see
    sending.py). Returns how many rows it claimed (0: nothing due)."""
    claimed = sending.claim(priority=priority, limit=int(settings.EMAIL_BATCH_SIZE))
    sending.batch_send(claimed)
    return len(claimed)


def emails_drain(*, priority: str) -> int:
    """The drain of one priority: passes while rows are due or someone woke it."""
    return DRAINS[priority].run(work=lambda: emails_send_pass(priority=priority))


def _due(priority: str) -> Q:
    now = timezone.now()
    return Q(priority=priority) & (
        Q(status__in=[S.QUEUED, S.DEFERRED], next_attempt_at__lte=now)
        | Q(status=S.SENDING, lease_until__lt=now)
    )


def emails_sweep() -> int:
    """Beat: wake each priority's drain when the database shows it due rows (a lost wake,
    a deferred mail whose backoff has passed, a lease run out under a dead worker).
    Cheap when nothing is due: one probe of a partial index per priority. Returns how many
    chains it started."""
    due = [p for p in DRAINS if Email.objects.filter(_due(p)).exists()]
    return sum(DRAINS[p].wake_now() for p in due)
