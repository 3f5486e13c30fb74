"""Web Push delivery of new inbox rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["webpush_deliveries_create"]

logger = logging.getLogger(__name__)


def webpush_deliveries_create(*, kind: str, notification_ids: Sequence[int]) -> None:
    """HOOK, NOT BUILT YET: Web Push delivery of new inbox rows.

    The Web Push slice (apps/notifications/webpush/) will enqueue, in this same
    transaction, one outbox message per bounded batch of these notifications
    (`outbox_enqueue("notifications.webpush_deliver", args=[ids...])`), whose task sends to
    the subscriptions of the users whose `web_push` preference allows `kind` (critical
    kinds always), outside any transaction. Until then nothing is pushed.
    """
    if notification_ids:
        logger.debug(
            "web push not built: %d %s notifications not pushed", len(notification_ids), kind
        )
