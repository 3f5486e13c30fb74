"""The notifications app's stable error codes (besides the foundation's `invalid`)."""

from __future__ import annotations

from enum import StrEnum


class NotificationError(StrEnum):
    ENDPOINT_NOT_ALLOWED = "endpoint_not_allowed"
