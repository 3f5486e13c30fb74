"""`live_event_send` and its bulk form `live_events_send` against the real channels_redis
layer (the session's private Redis): events reach the group's channels after the commit,
never after a rollback, each group's in order, and a failure never reaches the caller."""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.test import override_settings

from tasks.live import LiveEvent, live_event_send, live_events_send

pytestmark = pytest.mark.django_db(transaction=True)


def _member() -> tuple[str, str]:
    """A group with one consumer channel in it, as a connected WebSocket consumer has."""
    group, channel = f"live-test-{uuid.uuid4().hex}", f"live-test.{uuid.uuid4().hex}"
    async_to_sync(get_channel_layer().group_add)(group, channel)
    return group, channel


def _receive(channel: str, timeout: float) -> dict[str, Any] | None:
    async def receive() -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)
        except TimeoutError:
            return None

    return async_to_sync(receive)()


def test_the_event_arrives_after_the_commit() -> None:
    group, channel = _member()
    event = {"type": "wallet.applied", "seq": 3}
    with transaction.atomic():
        live_event_send(group=group, event=event)
        event["seq"] = 99  # the caller's dict is not what is sent
        assert _receive(channel, 0.5) is None, "sent before the commit"
    assert _receive(channel, 5) == {"type": "wallet.applied", "seq": 3}


def test_nothing_is_sent_when_the_transaction_rolls_back() -> None:
    group, channel = _member()
    with pytest.raises(RuntimeError), transaction.atomic():
        live_event_send(group=group, event={"type": "wallet.applied", "seq": 1})
        raise RuntimeError("the write that the event announces fails")
    assert _receive(channel, 1) is None
    # The group still works: the next committed event arrives.
    with transaction.atomic():
        live_event_send(group=group, event={"type": "wallet.applied", "seq": 2})
    assert _receive(channel, 5) == {"type": "wallet.applied", "seq": 2}


def test_outside_a_transaction_it_sends_at_once() -> None:
    group, channel = _member()
    live_event_send(group=group, event={"type": "chat.message", "id": 7})
    assert _receive(channel, 5) == {"type": "chat.message", "id": 7}


def test_a_failed_send_never_raises_into_the_caller(caplog: Any) -> None:
    unreachable = copy.deepcopy(settings.CHANNEL_LAYERS)
    unreachable["default"]["CONFIG"]["hosts"] = ["redis://127.0.0.1:1/0"]  # nothing listens
    with (
        override_settings(CHANNEL_LAYERS=unreachable),
        caplog.at_level(logging.WARNING),
        transaction.atomic(),  # the send runs as this block exits, inside the override
    ):
        live_event_send(group="live-test-unreachable", event={"type": "x.y"})
    assert any("not sent" in record.getMessage() for record in caplog.records)


def test_an_event_without_a_type_is_refused_at_once() -> None:
    with pytest.raises(ValueError):
        live_event_send(group="live-test", event={"seq": 1})


# --- live_events_send -----------------------------------------------------------------------


def _drain(channel: str, timeout: float = 0.5) -> list[dict[str, Any]]:
    """Everything in the channel until it stays quiet for `timeout`."""
    received = []
    while (message := _receive(channel, timeout)) is not None:
        received.append(message)
    return received


def test_bulk_events_arrive_after_the_commit_each_group_in_order() -> None:
    members = [_member() for _ in range(30)]
    events = [(group, {"type": "x.event", "n": n}) for n in range(5) for group, _ in members]
    with transaction.atomic():
        # A concurrency below the number of groups: groups wait their turn, order holds.
        live_events_send(events, concurrency=4)
        assert _receive(members[0][1], 0.3) is None, "sent before the commit"
    for _, channel in members:
        assert [m["n"] for m in _drain(channel)] == [0, 1, 2, 3, 4]


def test_bulk_nothing_is_sent_on_rollback() -> None:
    group, channel = _member()
    with pytest.raises(RuntimeError), transaction.atomic():
        live_events_send([(group, {"type": "x.event", "n": 1})])
        raise RuntimeError("the write fails")
    assert _receive(channel, 1) is None


def test_bulk_outside_a_transaction_sends_at_once() -> None:
    group, channel = _member()
    live_events_send([(group, {"type": "x.event", "n": 1})])
    assert _receive(channel, 5) == {"type": "x.event", "n": 1}


def test_select_is_asked_after_the_commit_and_filters() -> None:
    (kept, kept_channel), (dropped, dropped_channel) = _member(), _member()
    asked: list[tuple[bool, list[str]]] = []

    def select(events: list[LiveEvent]) -> list[LiveEvent]:
        from django.db import connection

        asked.append((connection.in_atomic_block, [group for group, _ in events]))
        return [(group, event) for group, event in events if group == kept]

    with transaction.atomic():
        live_events_send(
            [(kept, {"type": "x.event"}), (dropped, {"type": "x.event"})], select=select
        )
        assert asked == []
    assert asked == [(False, [kept, dropped])]
    assert _receive(kept_channel, 5) == {"type": "x.event"}
    assert _receive(dropped_channel, 0.5) is None


def test_a_failing_select_sends_everything_and_never_raises(caplog: Any) -> None:
    group, channel = _member()

    def select(events: list[LiveEvent]) -> list[LiveEvent]:
        raise ConnectionError("presence unknown")

    with caplog.at_level(logging.WARNING):
        live_events_send([(group, {"type": "x.event"})], select=select)
    assert _receive(channel, 5) == {"type": "x.event"}
    assert any("select failed" in record.getMessage() for record in caplog.records)


def test_a_failed_bulk_send_never_raises_into_the_caller(caplog: Any) -> None:
    unreachable = copy.deepcopy(settings.CHANNEL_LAYERS)
    unreachable["default"]["CONFIG"]["hosts"] = ["redis://127.0.0.1:1/0"]
    with (
        override_settings(CHANNEL_LAYERS=unreachable),
        caplog.at_level(logging.WARNING),
        transaction.atomic(),
    ):
        live_events_send([(f"live-test-{n}", {"type": "x.y"}) for n in range(3)])
    assert any("not sent" in record.getMessage() for record in caplog.records)


def test_a_bulk_event_without_a_type_is_refused_at_once() -> None:
    with pytest.raises(ValueError), transaction.atomic():
        live_events_send([("live-test", {"type": "x.y"}), ("live-test", {"seq": 1})])
