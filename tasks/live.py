"""Live events: a channel-layer message to a group, sent after the commit that made it true.

A live event is a hint. channels_redis drops messages when a channel is full and forgets
group members after `group_expiry`, so every event carries a `seq` or id the client
resumes from (a `GET` from its last one), and a lost event costs a resume, never data.
What the event says must be stored first: it goes out only once the transaction that
stored it commits, and never if it rolls back.

    def message_post(*, room_id: int, ...) -> Message:
        with transaction.atomic():
            message = Message.objects.create(...)
            live_event_send(group=f"room.{room_id}", event={"type": "chat.message", ...})
        return message

Call it from sync code (a service, a task). Outside a transaction it sends at once.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

__all__ = ["live_event_send"]

logger = logging.getLogger(__name__)


def live_event_send(*, group: str, event: dict[str, Any], using: str | None = None) -> None:
    """Send `event` (a dict whose `type` names the consumer's handler) to every channel in
    `group`, after the current transaction on `using` commits.

    Never raises over a failed send (the channel layer down, a full channel): it is logged,
    and the client's resume recovers. A malformed event (no `type`) is the caller's bug
    and raises at once, before anything is committed.
    """
    if not isinstance(event.get("type"), str):
        raise ValueError(f"a live event needs a 'type' naming its handler: {event!r}")
    transaction.on_commit(partial(_send, group, dict(event)), using=using)


def _send(group: str, event: dict[str, Any]) -> None:
    try:
        layer = get_channel_layer()
        if layer is None:
            return  # no channel layer configured: nobody to tell
        async_to_sync(layer.group_send)(group, event)
    except Exception:
        logger.warning("live event to %s not sent; clients resume", group, exc_info=True)
