"""The one exception type for expected failures, and the codes the foundation uses.

Each app keeps its own codes in its `errors.py` as a StrEnum and raises `SurgeError`; the
DRF exception handler and WebSocket consumers turn it into the contract's error shape.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from rest_framework import exceptions, status


class ErrorCode(StrEnum):
    INVALID = "invalid"
    PARSE_ERROR = "parse_error"
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    REQUEST_TOO_LARGE = "request_too_large"
    THROTTLED = "throttled"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    SERVER_ERROR = "server_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    BAD_REQUEST = "bad_request"


class SurgeError(Exception):
    """An expected failure with a stable code, shown to the client as `{code, detail}`."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int = 400,
        fields: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = str(code)
        self.detail = detail
        self.status = status
        self.fields = fields
        self.headers = headers or {}

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.fields is not None:
            body["fields"] = self.fields
        return body


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = ErrorCode.REQUEST_TOO_LARGE.value
