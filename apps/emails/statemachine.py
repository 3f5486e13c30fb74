"""The one table of an email's allowed status moves (tasks/statemachine.py)."""

from __future__ import annotations

from tasks.statemachine import StateMachine

from .models import EmailStatus as S

EMAIL = StateMachine(
    "email",
    {
        # A claim takes a due row; one whose address is suppressed never leaves.
        S.QUEUED: {S.SENDING, S.SUPPRESSED},
        S.DEFERRED: {S.SENDING, S.SUPPRESSED},
        # The outcome of one attempt; `sending -> queued` hands back a row the batch never
        # reached; `sending -> sending` is a new claim of a row whose lease ran out.
        S.SENDING: {S.SENT, S.DEFERRED, S.BOUNCED, S.FAILED, S.QUEUED, S.SENDING, S.SUPPRESSED},
    },
)
