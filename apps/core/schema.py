"""OpenAPI pieces shared by every app: the error shape and its codes per status."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

_DEFAULT_CODES = {
    400: ["invalid", "parse_error"],
    401: ["not_authenticated"],
    403: ["permission_denied"],
    404: ["not_found"],
    409: [],
    410: [],
    413: ["request_too_large"],
    415: ["unsupported_media_type"],
    422: ["idempotency_key_reused"],
    429: ["throttled"],
}

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "code": serializers.CharField(),
        "detail": serializers.CharField(),
        "fields": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()), required=False
        ),
    },
)


def error_responses(*statuses: int, extra: dict[int, list[str]] | None = None) -> dict[int, Any]:
    """`{status: OpenApiResponse}` naming the error codes each status may carry.

    `extra` adds an endpoint's own codes, e.g. `{409: ["already_issued"]}`.
    """
    responses: dict[int, Any] = {}
    for status in statuses:
        names = _DEFAULT_CODES.get(status, []) + (extra or {}).get(status, [])
        responses[status] = OpenApiResponse(
            response=ErrorSerializer, description="Error codes: " + ", ".join(names or ["-"])
        )
    return responses
