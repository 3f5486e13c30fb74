"""The broadcast's one transition table: the fan-out (queued -> sending, and done when it
has nothing to wait for) and the Web Push record (sending -> done once every delivery
ended) both move it through here."""

from __future__ import annotations

from tasks.statemachine import StateMachine

from ..models import Broadcast

__all__ = ["BROADCAST_MACHINE"]

BROADCAST_MACHINE = StateMachine(
    "broadcast",
    {
        Broadcast.Status.QUEUED: {Broadcast.Status.SENDING, Broadcast.Status.DONE},
        Broadcast.Status.SENDING: {Broadcast.Status.DONE},
    },
)
