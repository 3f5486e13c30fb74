"""Browsers' Web Push subscriptions: register (or move to whoever registered last) and
forget. Checked before anything is stored: an allowed push-service host, usable keys."""

from __future__ import annotations

from django.db import connection

from .. import validation
from ..models import WebPushSubscription

__all__ = ["webpush_subscription_register", "webpush_subscription_unregister"]

_WEBPUSH_TABLE = WebPushSubscription._meta.db_table

_REGISTER_SQL = f"""
INSERT INTO {_WEBPUSH_TABLE}
    (user_id, endpoint, p256dh, auth, user_agent, failure_count)
VALUES (%(user)s, %(endpoint)s, %(p256dh)s, %(auth)s, %(user_agent)s, 0)
ON CONFLICT (endpoint) DO UPDATE SET
    user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
    user_agent = EXCLUDED.user_agent, failure_count = 0, last_failure_at = NULL
RETURNING id, (xmax = 0) AS created
"""


def webpush_subscription_register(
    *, user_id: int, endpoint: str, p256dh: str, auth: str, user_agent: str = ""
) -> tuple[WebPushSubscription, bool]:
    """Stores the browser's subscription for the user; True if it is new. The same
    endpoint again (new keys, another user logged in on that browser) updates it and
    moves it to this user. A bad endpoint or key is a 400 and stores nothing."""
    validation.check_endpoint(endpoint)
    validation.check_keys(p256dh=p256dh, auth=auth)
    with connection.cursor() as cursor:
        cursor.execute(
            _REGISTER_SQL,
            {
                "user": user_id,
                "endpoint": endpoint,
                "p256dh": p256dh,
                "auth": auth,
                "user_agent": user_agent[:512],
            },
        )
        subscription_id, created = cursor.fetchone()
    return WebPushSubscription.objects.get(pk=subscription_id), bool(created)


def webpush_subscription_unregister(*, user_id: int, endpoint: str) -> None:
    """Forgets the caller's subscription at `endpoint` (someone else's is left alone, and
    the answer is the same: no way to probe for endpoints)."""
    WebPushSubscription.objects.filter(user_id=user_id, endpoint=endpoint).delete()
