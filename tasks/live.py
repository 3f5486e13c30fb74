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

Many events at once (a batch of 2,000 rows, one event each) go through `live_events_send`:
`live_event_send` costs an event loop and a Redis connection per event (milliseconds
each, seconds per batch); the bulk form sends the lot from one loop and one pool, a
bounded number of groups at a time, each group's events in the order given, and may first
pass them through `select` (say, only groups someone listens on), asked after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

__all__ = [
    "LIVE_EVENTS_CONCURRENCY",
    "LiveEvent",
    "SentOnce",
    "live_event_send",
    "live_events_send",
]

logger = logging.getLogger(__name__)

# (group, event): one live event to one group.
LiveEvent = tuple[str, dict[str, Any]]
# Groups sent to at once by `live_events_send`: enough to hide Redis round trips, few
# enough that a big batch does not open hundreds of connections in the pool.
LIVE_EVENTS_CONCURRENCY = 64


def live_event_send(*, group: str, event: dict[str, Any], using: str | None = None) -> None:
    """Send `event` (a dict whose `type` names the consumer's handler) to every channel in
    `group`, after the current transaction on `using` commits.

    Never raises over a failed send (the channel layer down, a full channel): it is logged,
    and the client's resume recovers. A malformed event (no `type`) is the caller's bug
    and raises at once, before anything is committed.
    """
    _check(event)
    transaction.on_commit(partial(_send, group, dict(event)), using=using)


def _send(group: str, event: dict[str, Any]) -> None:
    try:
        layer = get_channel_layer()
        if layer is None:
            return  # no channel layer configured: nobody to tell
        async_to_sync(layer.group_send)(group, event)
    except Exception:
        logger.warning("live event to %s not sent; clients resume", group, exc_info=True)


def live_events_send(
    events: Iterable[LiveEvent],
    *,
    select: Callable[[list[LiveEvent]], Iterable[LiveEvent]] | None = None,
    using: str | None = None,
    concurrency: int = LIVE_EVENTS_CONCURRENCY,
) -> None:
    """Send each `(group, event)` after the current transaction on `using` commits (at once
    outside one), from one event loop: up to `concurrency` groups at a time, each group's
    events one after the other in the order given (a client sees them in order).

    `select`, if given, is called after the commit with the events and returns those to
    send (a filter the caller can only answer then, e.g. who is connected now). Neither a
    failed send nor a failing `select` raises into the caller: a failed send is logged (the
    client resumes), a failing `select` is logged and everything is sent (an event too
    many costs a group_send, one too few a resume). A malformed event raises at once.
    """
    batch = [(str(group), dict(event)) for group, event in events]
    for _, event in batch:
        _check(event)
    if batch:
        transaction.on_commit(partial(_send_many, batch, select, concurrency), using=using)


def _check(event: dict[str, Any]) -> None:
    if not isinstance(event.get("type"), str):
        raise ValueError(f"a live event needs a 'type' naming its handler: {event!r}")


def _send_many(
    events: list[LiveEvent],
    select: Callable[[list[LiveEvent]], Iterable[LiveEvent]] | None,
    concurrency: int,
) -> None:
    if select is not None:
        try:
            events = list(select(events))
        except Exception:
            logger.warning("live events' select failed; sending all %d", len(events), exc_info=True)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for group, event in events:
        by_group.setdefault(group, []).append(event)
    if not by_group:
        return

    async def send_all() -> None:
        layer = get_channel_layer()
        if layer is None:
            return  # no channel layer configured: nobody to tell
        gate = asyncio.Semaphore(max(1, concurrency))

        async def send(group: str, group_events: list[dict[str, Any]]) -> None:
            async with gate:
                for event in group_events:
                    await layer.group_send(group, event)

        results = await asyncio.gather(
            *(send(group, group_events) for group, group_events in by_group.items()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            logger.warning(
                "live events to %d of %d groups not sent; clients resume",
                len(failures),
                len(by_group),
                exc_info=failures[0],
            )

    try:
        async_to_sync(send_all)()
    except Exception:
        logger.warning(
            "live events to %d groups not sent; clients resume", len(by_group), exc_info=True
        )


class SentOnce:
    """The ids (or seqs) one socket has sent, the newest `keep` of them: a consumer that
    gets the same item live and from a resume (or twice live) sends it once. Old ids are
    forgotten first; a resume never reaches back past what a client could still miss."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._seen: dict[int, None] = {}  # insertion-ordered: the oldest is first

    def first_time(self, item_id: int) -> bool:
        """True (and remembered) if `item_id` was not sent before; False otherwise."""
        if item_id in self._seen:
            return False
        self._seen[item_id] = None
        if len(self._seen) > self.keep:
            del self._seen[next(iter(self._seen))]
        return True
