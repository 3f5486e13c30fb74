"""One DRF exception handler: every error leaves as `{code, detail, fields?}`."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DataError, OperationalError
from django.http import Http404
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import ErrorCode, RequestTooLarge, SurgeError

logger = logging.getLogger(__name__)

# DRF codes renamed to the contract's: a bad token is "without valid credentials" too.
_CODE_ALIASES = {"authentication_failed": ErrorCode.NOT_AUTHENTICATED.value}


def flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Nested serializer errors as `{"items.0.quantity": ["..."]}`."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            # A nested serializer's own errors belong to the field that holds it.
            if key == "non_field_errors" and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            fields.update(flatten_fields(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            fields[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                if item:
                    fields.update(
                        flatten_fields(item, f"{prefix}.{index}" if prefix else str(index))
                    )
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    return _CODE_ALIASES.get(str(code), str(code))


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, SurgeError):
        return Response(exc.as_dict(), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestTooLarge()
    elif isinstance(exc, (RedisConnectionError, RedisTimeoutError, OperationalError)):
        # A dependency is down or restarting: nothing was accepted, and the client may
        # simply try again.
        logger.warning("dependency unavailable: %s", exc)
        return Response(
            {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "detail": "Try again shortly."},
            status=503,
            headers={"Retry-After": "1"},
        )
    elif isinstance(exc, DataError):
        # A value the database cannot hold (an integer past bigint, say) that a serializer
        # let through: the client's fault, and the transaction has rolled back.
        logger.warning("database rejected a value: %s", exc)
        exc = exceptions.ValidationError({"non_field_errors": ["A value is out of range."]})

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return None  # a real bug: Django's 500 handling (JSON under /api/) takes over

    if isinstance(exc, exceptions.ValidationError):
        body: dict[str, Any] = {
            "code": ErrorCode.INVALID.value,
            "detail": "Invalid input.",
            "fields": flatten_fields(exc.detail),
        }
    else:
        body = {"code": _code_of(exc), "detail": str(exc.detail)}
    response.data = body
    return response
