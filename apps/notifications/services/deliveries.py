"""Web Push delivery of inbox rows: a durable row per (notification, subscription), pushed
by a drain.

Why the drain (tasks/drain.py) and not the outbox: a delivery row is itself the work, and
there are many small ones (a broadcast makes one per subscriber, a coupon batch up to
2,000); an outbox message per row, or per batch of ids, would be a second record of the
same work. So the rows are written in the transaction that writes their inbox rows (one
INSERT ... SELECT per batch), `DRAIN.wake()` starts the one global chain after the commit,
each pass claims one bounded batch, and beat's `webpush_drain_sweep` restarts the chain
when rows are due and none runs (a lost wake, a dead worker, a retry coming due).

A pass, in three steps so the HTTP calls run outside any transaction:
1. claim (one short transaction): due pending rows, FOR UPDATE SKIP LOCKED, get one more
   attempt and `claimed_until` (the claim's lease); commit;
2. send each with `push_send` on a few threads (the sender pools per origin);
3. record (one short transaction): one UPDATE of the deliveries, one of the subscriptions,
   one DELETE of the gone ones, one UPDATE of the broadcasts' counters, then broadcasts
   whose deliveries have all ended move to `done`.

At most once, not at least once. A worker SIGKILLed between a send and its record leaves
rows claimed and unrecorded: whether the push service took those pushes nobody knows. The
issue asks for at most one push per subscription (a duplicate is a second buzz on a
phone; a missing one still leaves the inbox row, which the user sees in the app), so such a
row is never sent again: when its lease lapses the next claim ends it `failed` ("outcome
unknown") and counts it. Rows claimed with it but not yet sent are lost the same way; a
small batch (WEBPUSH_BATCH_SIZE) bounds how many one crash costs. A send that outlives its
lease cannot be recorded twice either: the record matches the attempt it claimed.

Who gets a push: each subscription of the notification's user whose `web_push` preference
for the kind is on (critical kinds always), whether or not the user has a socket open.
Zulip pushes only to users with no live client; here presence is approximate (a dead ws
process leaves its counts behind, presence.py), so following it could silence a user's
phone for good, and an open tab on one device says nothing about the phone in a pocket.
The browser knows exactly whether a page of ours is visible: the service worker can skip
showing a push for a visible client.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from tasks.drain import Drain

from .. import kinds as kinds_mod
from ..models import (
    Broadcast,
    Notification,
    NotificationPreference,
    WebPushDelivery,
    WebPushSubscription,
)
from .states import BROADCAST_MACHINE

__all__ = [
    "DRAIN",
    "WEBPUSH_DELIVER_TASK",
    "deliveries_insert_sql",
    "push_params",
    "webpush_deliver_batch",
    "webpush_deliveries_created",
    "webpush_drain",
    "webpush_drain_sweep",
]

logger = logging.getLogger(__name__)

WEBPUSH_DELIVER_TASK = "notifications.webpush_deliver"
WEBPUSH_QUEUE = "bulk"


def _drain_lease_ms() -> float:
    # A pass lasts at most about one claim's lease; the chain's flag outlives it.
    return (float(settings.WEBPUSH_LEASE_S) + 10.0) * 1000


def _batch_size() -> int:
    return max(1, int(settings.WEBPUSH_BATCH_SIZE))


DRAIN = Drain(
    "notifications-webpush",
    task=WEBPUSH_DELIVER_TASK,
    queue=WEBPUSH_QUEUE,
    keyed=False,
    lease_ms=_drain_lease_ms,
)

_DELIVERY_TABLE = WebPushDelivery._meta.db_table
_NOTIFICATION_TABLE = Notification._meta.db_table
_PREFERENCE_TABLE = NotificationPreference._meta.db_table
_SUBSCRIPTION_TABLE = WebPushSubscription._meta.db_table
_BROADCAST_TABLE = Broadcast._meta.db_table
_PENDING = WebPushDelivery.Status.PENDING.value
_DELIVERED = WebPushDelivery.Status.DELIVERED.value
_FAILED = WebPushDelivery.Status.FAILED.value
_GONE = WebPushDelivery.Status.GONE.value

# --- Create (in the inbox rows' transaction) ------------------------------------------------


def deliveries_insert_sql(*, rows: str, broadcast: str = "NULL") -> str:
    """The INSERT of the deliveries of new inbox rows, for the statement that writes them
    (a CTE `AS (...)` beside the inbox INSERT: a batch of 2,000 stays one statement).

    `rows` names a CTE of the new inbox rows with `id` and `user_id`; `broadcast` is the
    SQL of their broadcast id. Every subscription of each row's user gets one, if the
    user's web_push preference for `%(kind)s` allows it (no row: the default) or the kind
    is critical (`%(critical)s`); `%(default_web_push)s` is `push_params()`'s. RETURNING 1
    per delivery: the caller counts them, and passes the count to
    `webpush_deliveries_created` after the statement."""
    return f"""
    INSERT INTO {_DELIVERY_TABLE}
        (notification_id, subscription_id, broadcast_id, status, attempts, last_error)
    SELECT r.id, s.id, {broadcast}, '{_PENDING}', 0, ''
    FROM {rows} AS r
    JOIN {_SUBSCRIPTION_TABLE} AS s ON s.user_id = r.user_id
    LEFT JOIN {_PREFERENCE_TABLE} AS p ON p.user_id = r.user_id AND p.kind = %(kind)s
    WHERE %(webpush_on)s AND (%(critical)s OR coalesce(p.web_push, %(default_web_push)s))
    ON CONFLICT (notification_id, subscription_id) DO NOTHING
    RETURNING 1
    """


def push_params() -> dict[str, Any]:
    # No VAPID keys (production without Web Push, see webpush.keys): no deliveries at all.
    return {
        "default_web_push": kinds_mod.DEFAULT_CHANNELS["web_push"],
        "webpush_on": bool(settings.VAPID_PRIVATE_KEY),
    }


def webpush_deliveries_created(*, count: int) -> None:
    """In the transaction that wrote `count` deliveries: the drain wakes after its commit
    (nothing on rollback: the rows are gone with it)."""
    if count:
        DRAIN.wake()


# --- The drain ------------------------------------------------------------------------------


def webpush_drain() -> int:
    """One message of the drain's chain: passes of `webpush_deliver_batch`."""
    return DRAIN.run(work=webpush_deliver_batch)


def webpush_drain_sweep() -> bool:
    """Beat: start the chain if a delivery is due and none runs. True if it started one."""
    due = WebPushDelivery.objects.filter(
        status=WebPushDelivery.Status.PENDING, next_attempt_at__lte=timezone.now()
    ).exists()
    return DRAIN.wake_now() if due else False


# --- One pass --------------------------------------------------------------------------------

_CLAIM_SQL = f"""
WITH due AS (
    SELECT id, claimed_until AS lapsed_claim FROM {_DELIVERY_TABLE}
    WHERE status = '{_PENDING}' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {_DELIVERY_TABLE} AS d
SET attempts = d.attempts + 1,
    claimed_until = now() + %(lease)s * interval '1 second',
    next_attempt_at = now() + %(lease)s * interval '1 second'
FROM due
WHERE d.id = due.id
RETURNING d.id, d.attempts, due.lapsed_claim IS NOT NULL, d.subscription_id, d.notification_id
"""


@dataclass(frozen=True, slots=True)
class _Claimed:
    delivery_id: int
    attempt: int
    broadcast_id: int | None
    subscription_id: int | None
    endpoint: str | None
    p256dh: str
    auth: str
    payload: dict[str, Any]
    kind: str
    source_key: str
    lapsed: bool  # claimed before and never recorded: its worker died


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str  # pending (a retry), delivered, failed, gone
    status_code: int | None
    error: str
    retry_after_s: float | None = None


def webpush_deliver_batch() -> int:
    """Claims, sends and records one batch of due deliveries; returns how many it claimed.

    Invariants: a push is sent only after its claim committed, outside any transaction; a
    delivery is sent at most once per claim and never after an unrecorded claim (see the
    module docstring); each outcome is recorded once, under the attempt that claimed it.
    """
    claimed = _claim(_batch_size())
    if not claimed:
        return 0
    outcomes = _send_all(claimed)
    _record(claimed, outcomes)
    return len(claimed)


def _claim(limit: int) -> list[_Claimed]:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"limit": limit, "lease": float(settings.WEBPUSH_LEASE_S)})
        rows = cursor.fetchall()
        if not rows:
            return []
        notifications = {
            n.pk: n
            for n in Notification.objects.filter(pk__in={row[4] for row in rows}).only(
                "id", "kind", "title", "body", "url", "source_key", "broadcast_id", "created_at"
            )
        }
        subscriptions = {
            s.pk: s
            for s in WebPushSubscription.objects.filter(
                pk__in={row[3] for row in rows if row[3] is not None}
            ).only("id", "endpoint", "p256dh", "auth")
        }
    claimed = []
    for delivery_id, attempt, lapsed, subscription_id, notification_id in sorted(rows):
        notification = notifications[notification_id]
        subscription = subscriptions.get(subscription_id) if subscription_id else None
        claimed.append(
            _Claimed(
                delivery_id=delivery_id,
                attempt=attempt,
                broadcast_id=notification.broadcast_id,
                subscription_id=subscription.pk if subscription else None,
                endpoint=subscription.endpoint if subscription else None,
                p256dh=subscription.p256dh if subscription else "",
                auth=subscription.auth if subscription else "",
                payload=_payload(notification),
                kind=notification.kind,
                source_key=notification.source_key,
                lapsed=bool(lapsed),
            )
        )
    return claimed


def _payload(notification: Notification) -> dict[str, Any]:
    """What the service worker shows; the id lets it open (and dedupe) the inbox row."""
    return {
        "id": notification.pk,
        "kind": notification.kind,
        "title": notification.title,
        "body": notification.body[:1000],
        "url": notification.url,
    }


def _send_all(claimed: list[_Claimed]) -> dict[int, _Outcome]:
    outcomes: dict[int, _Outcome] = {}
    to_send = []
    for item in claimed:
        if item.lapsed:
            outcomes[item.delivery_id] = _Outcome(_FAILED, None, "outcome unknown: worker lost")
        elif item.endpoint is None:
            outcomes[item.delivery_id] = _Outcome(_GONE, None, "subscription deleted")
        else:
            to_send.append(item)
    if to_send:
        workers = max(1, min(int(settings.WEBPUSH_SEND_CONCURRENCY), len(to_send)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webpush") as pool:
            for item, outcome in zip(to_send, pool.map(_send_one, to_send), strict=True):
                outcomes[item.delivery_id] = outcome
    return outcomes


def _send_one(item: _Claimed) -> _Outcome:
    # Imported here: the sender loads the HTTP and crypto stack, which only workers need.
    from ..webpush.sender import PushOutcome, push_send

    try:
        result = push_send(
            endpoint=item.endpoint or "",
            p256dh=item.p256dh,
            auth=item.auth,
            payload=item.payload,
            ttl_s=kinds_mod.PUSH_TTL_S.get(item.kind, kinds_mod.DEFAULT_PUSH_TTL_S),
            urgency=kinds_mod.PUSH_URGENCY.get(item.kind, "normal"),
            topic=kinds_mod.push_topic(item.kind, item.source_key),
        )
    except Exception as exc:
        # A caller's mistake (payload too large, a bad setting): retrying cannot help, and
        # it must not abort the batch's other pushes.
        logger.exception("web push of delivery %s not sendable", item.delivery_id)
        return _Outcome(_FAILED, None, f"not sendable: {type(exc).__name__}"[:200])
    if result.outcome is PushOutcome.DELIVERED:
        return _Outcome(_DELIVERED, result.status_code, "")
    if result.outcome is PushOutcome.GONE:
        return _Outcome(_GONE, result.status_code, result.detail[:200])
    if result.outcome is PushOutcome.TRANSIENT:
        return _Outcome(_PENDING, result.status_code, result.detail[:200], result.retry_after_s)
    return _Outcome(_FAILED, result.status_code, result.detail[:200])


def _retry_at(now: datetime, attempt: int, retry_after_s: float | None) -> datetime:
    cap = float(settings.WEBPUSH_RETRY_MAX_S)
    backoff = min(cap, float(settings.WEBPUSH_RETRY_BASE_S) * 2 ** (attempt - 1))
    delay = random.uniform(backoff / 2, backoff)  # jitter: retries of one burst spread out
    if retry_after_s is not None:
        delay = max(delay, min(cap, retry_after_s))
    return now + timedelta(seconds=delay)


# Each delivery moves only if it is still the attempt this pass claimed: a late record of
# a claim that lapsed (and was ended by another pass) changes nothing.
_RECORD_SQL = f"""
UPDATE {_DELIVERY_TABLE} AS d
SET status = u.status, last_status_code = u.status_code, last_error = u.error,
    next_attempt_at = coalesce(u.next_attempt_at, d.next_attempt_at),
    claimed_until = NULL,
    finished_at = CASE WHEN u.status = '{_PENDING}' THEN NULL ELSE now() END
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
            %(codes)s::int[], %(errors)s::text[], %(next)s::timestamptz[])
     AS u(id, attempt, status, status_code, error, next_attempt_at)
WHERE d.id = u.id AND d.attempts = u.attempt AND d.status = '{_PENDING}'
RETURNING d.id, d.status, d.broadcast_id, d.subscription_id
"""

# The other pending deliveries of subscriptions that are gone, not held by a claim (a
# claimed one records its own outcome).
_END_GONE_SQL = f"""
UPDATE {_DELIVERY_TABLE}
SET status = '{_GONE}', last_error = 'subscription gone', finished_at = now()
WHERE subscription_id = ANY(%(subscriptions)s) AND status = '{_PENDING}'
  AND claimed_until IS NULL
RETURNING id, status, broadcast_id, subscription_id
"""

_SUBSCRIPTIONS_SQL = f"""
UPDATE {_SUBSCRIPTION_TABLE} AS s
SET last_success_at = CASE WHEN u.delivered > 0 THEN now() ELSE s.last_success_at END,
    last_failure_at = CASE WHEN u.failed > 0 THEN now() ELSE s.last_failure_at END,
    failure_count = CASE WHEN u.delivered > 0 THEN u.failed ELSE s.failure_count + u.failed END
FROM unnest(%(ids)s::bigint[], %(delivered)s::int[], %(failed)s::int[])
     AS u(id, delivered, failed)
WHERE s.id = u.id
"""

_BROADCASTS_SQL = f"""
UPDATE {_BROADCAST_TABLE} AS b
SET delivered = b.delivered + u.delivered, failed = b.failed + u.failed, gone = b.gone + u.gone
FROM unnest(%(ids)s::bigint[], %(delivered)s::int[], %(failed)s::int[], %(gone)s::int[])
     AS u(id, delivered, failed, gone)
WHERE b.id = u.id
"""


def _record(claimed: list[_Claimed], outcomes: dict[int, _Outcome]) -> None:
    now = timezone.now()
    max_attempts = max(1, int(settings.WEBPUSH_MAX_ATTEMPTS))
    ids, attempts, statuses, codes, errors, next_at = [], [], [], [], [], []
    for item in claimed:
        outcome = outcomes[item.delivery_id]
        status, when = outcome.status, None
        if status == _PENDING:
            if item.attempt >= max_attempts:
                status = _FAILED  # the retry budget is spent: counted as failed
            else:
                when = _retry_at(now, item.attempt, outcome.retry_after_s)
        ids.append(item.delivery_id)
        attempts.append(item.attempt)
        statuses.append(status)
        codes.append(outcome.status_code)
        errors.append(outcome.error)
        next_at.append(when)

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _RECORD_SQL,
            {
                "ids": ids,
                "attempts": attempts,
                "statuses": statuses,
                "codes": codes,
                "errors": errors,
                "next": next_at,
            },
        )
        ended = cursor.fetchall()
        gone_subscriptions = sorted({row[3] for row in ended if row[1] == _GONE and row[3]})
        if gone_subscriptions:
            cursor.execute(_END_GONE_SQL, {"subscriptions": gone_subscriptions})
            ended += cursor.fetchall()
            # Exactly those subscriptions; their deliveries keep their rows (subscription
            # NULL), so the counts above stay true.
            WebPushSubscription.objects.filter(pk__in=gone_subscriptions).delete()

        per_subscription: dict[int, Counter[str]] = defaultdict(Counter)
        per_broadcast: dict[int, Counter[str]] = defaultdict(Counter)
        for _, status, broadcast_id, subscription_id in ended:
            if subscription_id and status in (_DELIVERED, _FAILED):
                per_subscription[subscription_id][status] += 1
            if broadcast_id and status != _PENDING:
                per_broadcast[broadcast_id][status] += 1
        if per_subscription:
            subs = sorted(set(per_subscription) - set(gone_subscriptions))
            cursor.execute(
                _SUBSCRIPTIONS_SQL,
                {
                    "ids": subs,
                    "delivered": [per_subscription[s][_DELIVERED] for s in subs],
                    "failed": [per_subscription[s][_FAILED] for s in subs],
                },
            )
        if per_broadcast:
            _count_broadcasts(cursor, per_broadcast)


def _count_broadcasts(cursor: Any, per_broadcast: dict[int, Counter[str]]) -> None:
    touched = sorted(per_broadcast)
    # In id order, so two passes counting the same broadcasts never deadlock.
    list(Broadcast.objects.select_for_update().filter(pk__in=touched).order_by("pk").values("pk"))
    cursor.execute(
        _BROADCASTS_SQL,
        {
            "ids": touched,
            "delivered": [per_broadcast[b][_DELIVERED] for b in touched],
            "failed": [per_broadcast[b][_FAILED] for b in touched],
            "gone": [per_broadcast[b][_GONE] for b in touched],
        },
    )
    BROADCAST_MACHINE.update(
        Broadcast.objects.filter(
            pk__in=touched,
            fanned_out_at__isnull=False,
            deliveries__lte=F("delivered") + F("failed") + F("gone"),
        ),
        current=Broadcast.Status.SENDING,
        target=Broadcast.Status.DONE,
        strict=False,
        finished_at=timezone.now(),
    )
