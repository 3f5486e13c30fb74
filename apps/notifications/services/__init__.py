"""Every write of the notifications app, one module per part; the names here are what
the other apps (coupons, orders, wallets), the API, the admin and the tasks call.

- `inbox`: `notify_user` / `notify_users` (in the caller's transaction, live after the
  commit) and read marks;
- `preferences`: channels per kind; `topics`: topics and subscribers;
- `subscriptions`: browsers' Web Push subscriptions;
- `broadcasts`: a message to a topic's subscribers, fanned out in keyset batches;
- `deliveries`: Web Push delivery of inbox rows (durable rows, sent by a drain).
"""

from __future__ import annotations

from .broadcasts import (
    BROADCAST_BATCH_SIZE,
    BROADCAST_FANOUT_TASK,
    BROADCAST_MACHINE,
    broadcast_create,
    broadcast_fanout_batch,
)
from .deliveries import (
    WEBPUSH_DELIVER_TASK,
    webpush_deliver_batch,
    webpush_deliveries_created,
    webpush_drain,
    webpush_drain_sweep,
)
from .inbox import (
    Notice,
    notification_event,
    notification_mark_read,
    notifications_announce,
    notifications_mark_all_read,
    notify_user,
    notify_users,
    user_group,
)
from .preferences import preferences_set
from .subscriptions import webpush_subscription_register, webpush_subscription_unregister
from .topics import topic_create, topic_subscribe, topic_unsubscribe

__all__ = [
    "BROADCAST_BATCH_SIZE",
    "BROADCAST_FANOUT_TASK",
    "BROADCAST_MACHINE",
    "WEBPUSH_DELIVER_TASK",
    "Notice",
    "broadcast_create",
    "broadcast_fanout_batch",
    "notification_event",
    "notification_mark_read",
    "notifications_announce",
    "notifications_mark_all_read",
    "notify_user",
    "notify_users",
    "preferences_set",
    "topic_create",
    "topic_subscribe",
    "topic_unsubscribe",
    "user_group",
    "webpush_deliver_batch",
    "webpush_deliveries_created",
    "webpush_drain",
    "webpush_drain_sweep",
    "webpush_subscription_register",
    "webpush_subscription_unregister",
]
