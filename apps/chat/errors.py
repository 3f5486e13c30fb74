"""The chat app's stable error codes (WebSocket frames; `invalid` is the foundation's)."""

from __future__ import annotations

from enum import StrEnum


class ChatError(StrEnum):
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNKNOWN_TYPE = "unknown_type"
    RATE_LIMITED = "rate_limited"
