"""A worker lives through losing its broker connection with a message unacked (issue 19):
Celery 5.7 closes a lost connection twice, first in `collect()`, which detaches the
transport from the connection, then again; kombu's second close restores the unacked
messages through a pool it rebuilds from the detached transport. That raised
AttributeError, which nothing catches, and the worker exited ("Unrecoverable error")."""

from __future__ import annotations

import uuid
from typing import Any

from kombu import Exchange, Queue

from config.celery import app


def test_closing_a_detached_connection_with_an_unacked_message_raises_no_attribute_error() -> None:
    name = f"lost-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        bound = queue(channel)
        bound.declare()
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                declare=[queue])  # fmt: skip
        message = bound.get(no_ack=False)
        assert message is not None and channel.qos._delivered  # held, unacked
        conn._do_close_transport()  # what collect() leaves behind
        conn.close()  # Celery's second close: connection errors are ignored, nothing else
