"""How the toolkit tells a failure that may pass from one that will not.

Transient vs permanent is decided here, once, by exception class: `SurgeTask` retries
transient errors with exponential backoff and full jitter, and sends permanent ones (and
transient ones that ran out of retries) to the dead letters.
"""

from __future__ import annotations


class Transient(Exception):
    """Worth retrying: a timeout, a 503, a connection reset, a lock held elsewhere."""


class Permanent(Exception):
    """Retrying cannot help: bad input, a refused payment, a row that will never exist."""


class IllegalTransition(Exception):
    """A state machine was asked for a move its table does not allow."""

    def __init__(self, machine: str, current: str, target: str) -> None:
        super().__init__(f"{machine}: {current} -> {target} is not allowed")
        self.machine = machine
        self.current = current
        self.target = target
