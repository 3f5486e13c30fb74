"""`Idempotency-Key` for POSTs that create or start something, as one decorator.

How it keeps its promises:
- The view runs inside one transaction together with the insert of its record, so the
  effect and "this key was answered" commit together or not at all: a crash mid-way
  leaves the key free and nothing done.
- A transaction-scoped advisory lock on (user, key) makes a second request with the same
  key, while the first is still running, answer 409 `idempotency_key_in_use` at once
  instead of queueing behind it or running twice.
- Errors raised by the view roll everything back and are not remembered, so a client may
  retry after, say, a 503; answers it returns (2xx, and 4xx it chose) are replayed byte for
  byte with `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse
from django.http.request import RawPostDataException
from django.utils import timezone
from rest_framework.request import Request

from .errors import ErrorCode, SurgeError
from .models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _scope(request: Request) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"u:{user.pk}"
    return "anon"


def _raw_body(request: Request) -> bytes:
    try:
        return request._request.body
    except RawPostDataException:  # the stream was consumed already: fall back to the data
        return json.dumps(request.data, sort_keys=True, default=str).encode()


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update((request.method or "").encode() + b"\n" + request.path.encode() + b"\n")
    digest.update(_raw_body(request))
    return digest.hexdigest()


def _lock_id(scope: str, key: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"{scope}\x00{key}".encode()).digest()[:8], "big", signed=True
    )


def _replay(record: IdempotencyRecord) -> HttpResponse:
    response = HttpResponse(
        bytes(record.body), status=record.status_code, content_type=record.content_type
    )
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a DRF view's `post` so that it honours `Idempotency-Key`."""

    @functools.wraps(handler)
    def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return handler(view, request, *args, **kwargs)
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise SurgeError(
                ErrorCode.INVALID,
                "Idempotency-Key must be 1 to 255 printable characters.",
                fields={HEADER: ["Must be 1 to 255 printable characters."]},
            )
        scope = _scope(request)
        fingerprint = _fingerprint(request)
        fresh_after = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)

        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_id(scope, key)])
                (locked,) = cursor.fetchone()
            if not locked:
                raise SurgeError(
                    ErrorCode.IDEMPOTENCY_KEY_IN_USE,
                    "A request with this Idempotency-Key is still being processed.",
                    status=409,
                    headers={"Retry-After": "1"},
                )
            record = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
            if record is not None and record.created_at < fresh_after:
                record.delete()  # expired: the key starts a new life
                record = None
            if record is not None:
                if record.fingerprint != fingerprint:
                    raise SurgeError(
                        ErrorCode.IDEMPOTENCY_KEY_REUSED,
                        "This Idempotency-Key was used with a different request.",
                        status=422,
                    )
                return _replay(record)

            response = handler(view, request, *args, **kwargs)
            response = view.finalize_response(request, response, *args, **kwargs)
            if hasattr(response, "render"):
                response.render()
            if response.status_code < 500 and response.status_code != 429:
                IdempotencyRecord.objects.create(
                    scope=scope,
                    key=key,
                    fingerprint=fingerprint,
                    status_code=response.status_code,
                    content_type=response.get("Content-Type", "application/json"),
                    body=response.content,
                    request_id=getattr(request._request, "request_id", ""),
                )
            return response

    return wrapper


def purge_expired(*, older_than_hours: int | None = None) -> int:
    """Delete records past their lifetime; returns how many went."""
    hours = settings.IDEMPOTENCY_TTL_HOURS if older_than_hours is None else older_than_hours
    cutoff = timezone.now() - timedelta(hours=hours)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
