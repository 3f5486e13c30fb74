"""What an apply callback decides for a command, what an applier run reports, and the error
of a caller breaking the library's contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from ..models.ordering import CommandStatus, OrderedCommand, OrderedKey

K = TypeVar("K", bound=OrderedKey)
C = TypeVar("C", bound=OrderedCommand)


class OrderingError(RuntimeError):
    """The ordering library was used against its contract: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What the apply callback decided for one command."""

    status: CommandStatus
    reason: str = ""

    @classmethod
    def applied(cls) -> ApplyOutcome:
        return cls(CommandStatus.APPLIED)

    @classmethod
    def rejected(cls, reason: str) -> ApplyOutcome:
        return cls(CommandStatus.REJECTED, reason)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What one `apply_pending` run did.

    `has_more`: the batch was full and commands remain; run again (`continue_task` does).
    `waiting_for_seq`: the next seq is not visible (a gap); the accept that commits it
    enqueues the applier, so nothing is re-enqueued for it here.
    """

    key_id: int
    applied: int = 0
    rejected: int = 0
    last_applied_seq: int = 0
    has_more: bool = False
    waiting_for_seq: int | None = None
    key_found: bool = True

    @property
    def decided(self) -> int:
        return self.applied + self.rejected
