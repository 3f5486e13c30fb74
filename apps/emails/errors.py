"""The emails app's stable error codes (besides the foundation's `invalid`)."""

from __future__ import annotations

from enum import StrEnum


class EmailError(StrEnum):
    NOT_PAUSABLE = "not_pausable"
    NOT_PAUSED = "not_paused"
