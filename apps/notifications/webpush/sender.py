"""Sends one Web Push message: RFC 8030 (the push protocol), RFC 8291 (aes128gcm payload
encryption, done by pywebpush / http_ece) and RFC 8292 (VAPID, signed by py_vapid).

`push_send(...)` returns a `PushResult` and raises only for a caller's mistake (a bad
argument, a call inside a transaction, missing VAPID settings): a delivery task loops over
many subscriptions, and one revoked or broken subscription must never abort the others.

- `delivered` (2xx, normally 201): the push service took the message.
- `gone` (404, 410): the subscription expired or was revoked; delete exactly that one.
- `transient` (429, 5xx, no answer, a timeout, a reset): retry later with backoff, not
  before `retry_after_s` when the push service sent `Retry-After`.
  `result.raise_for_transient()` turns it into `PushTransient` (a `tasks.errors.Transient`).
- `failed` (any other status, unusable subscription keys): retrying cannot help; count it.

Costs kept off the per-message path:
- one pooled HTTP connection manager per push-service origin per process (made anew after
  a fork, as a Celery prefork child must not share its parent's sockets), with keep-alive,
  so a fan-out to one origin reuses its connections;
- the VAPID `Authorization` header is cached per origin: signed with `exp` 12 h ahead and
  re-signed after 6 h, well inside the 24 h push services accept, never per message (the
  payload encryption is per message by design: every message gets its own ephemeral key).

`TTL` is always sent (pywebpush's default of 0 lets a push service drop a message for a
device that is offline that very second), with `Urgency`, and `Topic` when given (a newer
message with the same topic replaces an undelivered older one).

The HTTP call never runs inside a database transaction: it would hold the connection idle
in transaction for as long as the push service takes. It raises RuntimeError instead.

Settings (read at each call): VAPID_PRIVATE_KEY, VAPID_PUBLIC_KEY, VAPID_SUBJECT (see keys.py).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import urllib3
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from py_vapid import jwt as vapid_jwt  # type: ignore[import-untyped]
from pywebpush import WebPusher  # type: ignore[import-untyped]

from tasks.errors import Transient

from .keys import InvalidSubscriptionKeys, b64url_decode, subscription_keys_check

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_TTL_S",
    "PayloadTooLarge",
    "PushOutcome",
    "PushResult",
    "PushTransient",
    "Urgency",
    "endpoint_origin",
    "push_send",
]

DEFAULT_TTL_S = 24 * 3600
# Push services keep a message at most about four weeks; a larger TTL is clamped by them
# anyway, so it is refused here as a mistake.
MAX_TTL_S = 28 * 24 * 3600
# RFC 8291 section 4: a push service must accept 4096 bytes of body, one record; minus the
# aes128gcm header (86), the AEAD tag (16) and the padding delimiter (1).
MAX_PAYLOAD_BYTES = 3993
# VAPID: signed for 12 h, re-signed after 6 h; push services refuse exp beyond 24 h.
VAPID_EXPIRY_S = 12 * 3600
VAPID_REFRESH_AFTER_S = 6 * 3600
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
# Connections kept per origin and process: a threads pool sends to one origin at once.
POOL_MAXSIZE = 16
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # RFC 8030 section 5.4
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Urgency(StrEnum):
    """RFC 8030 section 5.3: how much battery a device may spend to deliver it now."""

    VERY_LOW = "very-low"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class PushOutcome(StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    TRANSIENT = "transient"
    FAILED = "failed"


class PushTransient(Transient):
    """A push worth retrying; `retry_after_s` is the push service's Retry-After, if any."""

    def __init__(self, detail: str, *, retry_after_s: float | None, status_code: int | None):
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.status_code = status_code


class PayloadTooLarge(ValueError):
    """The payload does not fit one RFC 8291 record (MAX_PAYLOAD_BYTES)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: PushOutcome
    status_code: int | None  # None: no HTTP answer (connection error, timeout, bad keys)
    retry_after_s: float | None = None  # only for `transient`, when the service said
    detail: str = ""  # for logs and counters; never the endpoint (a capability URL)

    def raise_for_transient(self) -> None:
        if self.outcome is PushOutcome.TRANSIENT:
            raise PushTransient(
                self.detail, retry_after_s=self.retry_after_s, status_code=self.status_code
            )


def push_send(
    *,
    endpoint: str,
    p256dh: str,
    auth: str,
    payload: bytes | str | Mapping[str, Any],
    ttl_s: int = DEFAULT_TTL_S,
    urgency: Urgency | str = Urgency.NORMAL,
    topic: str | None = None,
) -> PushResult:
    """Encrypts `payload` (a mapping is sent as compact JSON) for the subscription
    (`endpoint`, `p256dh`, `auth` as the browser's PushSubscription.toJSON() gave them) and
    posts it to the push service. Never inside a transaction; never retries by itself."""
    if connection.in_atomic_block:
        # Not an assert: it must hold with -O too. Not transient: retrying cannot help.
        raise RuntimeError(
            "push_send called inside a database transaction: send after the commit, "
            "outside transaction.atomic()"
        )
    origin = endpoint_origin(endpoint)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be an int in 0..{MAX_TTL_S}: {ttl_s!r}")
    urgency = Urgency(urgency)
    if topic is not None and not _TOPIC.match(topic):
        raise ValueError("topic must be 1-32 characters of the base64url alphabet")
    data = _payload_bytes(payload)

    try:
        subscription_keys_check(p256dh=p256dh, auth=auth)
    except InvalidSubscriptionKeys as exc:
        return PushResult(PushOutcome.FAILED, None, detail=f"invalid subscription keys: {exc}")
    body = WebPusher({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}).encode(
        data, content_encoding="aes128gcm"
    )["body"]
    headers = {
        "Authorization": _vapid_authorization(origin),
        "TTL": str(ttl_s),
        "Urgency": urgency.value,
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
    }
    if topic is not None:
        headers["Topic"] = topic

    started = time.monotonic()
    try:
        response = _pool_for(origin).urlopen(
            "POST",
            endpoint,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            retries=False,
            redirect=False,  # a redirect could point anywhere; the endpoint is the contract
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        result = PushResult(PushOutcome.TRANSIENT, None, detail=f"no answer: {_cause(exc)}")
    else:
        result = _classify(response.status, response.headers.get("Retry-After"))
    logger.debug(
        "webpush %s -> %s (%s) in %.0f ms",
        origin,
        result.outcome,
        result.status_code,
        (time.monotonic() - started) * 1000,
    )
    return result


def endpoint_origin(endpoint: str) -> str:
    """`scheme://host[:port]` of an endpoint, the VAPID `aud` (RFC 8292 section 2): the
    default port is left out, the host lower-cased."""
    if not isinstance(endpoint, str):
        raise ValueError("endpoint must be a string")
    url = urllib3.util.parse_url(endpoint)
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ValueError("endpoint must be an http(s) URL with a host")
    host = url.host.lower()
    if url.port is None or url.port == _DEFAULT_PORTS[url.scheme]:
        return f"{url.scheme}://{host}"
    return f"{url.scheme}://{host}:{url.port}"


def _classify(status: int, retry_after: str | None) -> PushResult:
    if 200 <= status < 300:
        return PushResult(PushOutcome.DELIVERED, status)
    if status in (404, 410):
        return PushResult(PushOutcome.GONE, status, detail="subscription gone")
    if status == 429 or status >= 500:
        return PushResult(
            PushOutcome.TRANSIENT,
            status,
            retry_after_s=_retry_after_s(retry_after),
            detail=f"push service answered {status}",
        )
    # 400 (bad request), 401/403 (VAPID refused: keys changed since the browser subscribed),
    # 413 (too large), 3xx (not followed) and the rest.
    return PushResult(PushOutcome.FAILED, status, detail=f"push service answered {status}")


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After is delay-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 for "UTC, origin unknown"
        return None
    return max(0.0, when.timestamp() - _now())


def _payload_bytes(payload: bytes | str | Mapping[str, Any]) -> bytes:
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode()
    elif isinstance(payload, Mapping):
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        raise TypeError(f"payload must be bytes, str or a mapping, not {type(payload)}")
    if not data:
        raise ValueError("an empty payload: send something the service worker can show")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload is {len(data)} bytes; at most {MAX_PAYLOAD_BYTES}")
    return data


def _now() -> float:
    # One indirection, so a test can move the VAPID clock without touching time.time.
    return time.time()


# --- VAPID header cache -------------------------------------------------------------------
# Keyed by origin and the key and subject it was signed with, so changed settings (a key
# rotation, a test's own keys) never reuse a header signed with the old ones. A header is
# only a string: a forked child may keep using its parent's.

_vapid_headers: dict[tuple[str, str, str], tuple[str, float]] = {}  # -> (header, refresh_at)
_vapid_lock = threading.Lock()


def _vapid_authorization(origin: str) -> str:
    private_key = str(getattr(settings, "VAPID_PRIVATE_KEY", "") or "")
    public_key = str(getattr(settings, "VAPID_PUBLIC_KEY", "") or "")
    subject = str(getattr(settings, "VAPID_SUBJECT", "") or "")
    if not (private_key and public_key and subject):
        raise ImproperlyConfigured(
            "Web Push needs VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY and VAPID_SUBJECT"
        )
    cache_key = (origin, private_key, subject)
    now = _now()
    cached = _vapid_headers.get(cache_key)
    if cached is not None and now < cached[1]:
        return cached[0]
    with _vapid_lock:
        cached = _vapid_headers.get(cache_key)
        if cached is not None and now < cached[1]:
            return cached[0]
        claims = {"aud": origin, "exp": int(now) + VAPID_EXPIRY_S, "sub": subject}
        token = vapid_jwt.sign(claims, _signing_key(private_key))
        header = f"vapid t={token}, k={public_key}"
        _vapid_headers[cache_key] = (header, now + VAPID_REFRESH_AFTER_S)
        return header


_signing_keys: dict[str, ec.EllipticCurvePrivateKey] = {}


def _signing_key(private_key: str) -> ec.EllipticCurvePrivateKey:
    key = _signing_keys.get(private_key)
    if key is None:
        scalar = int.from_bytes(b64url_decode(private_key), "big")
        key = _signing_keys[private_key] = ec.derive_private_key(scalar, ec.SECP256R1())
    return key


# --- Connection pools ---------------------------------------------------------------------
# urllib3 directly (as apps/orders/payments.py): requests' session layer adds CPU per call
# and nothing a push needs. One manager per origin, so each origin has its own bounded pool
# and a slow push service cannot take another's connections. Proxies from the environment
# (HTTPS_PROXY, NO_PROXY...) are honoured, read once per origin.

_pools: dict[str, urllib3.PoolManager] = {}
_pools_pid: int | None = None
_pools_lock = threading.Lock()


def _pool_for(origin: str) -> urllib3.PoolManager:
    global _pools_pid
    pid = os.getpid()
    if _pools_pid != pid:  # a forked child never reuses its parent's sockets
        with _pools_lock:
            if _pools_pid != pid:
                _pools.clear()
                _pools_pid = pid
    pool = _pools.get(origin)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(origin)
            if pool is None:
                pool = _pools[origin] = _new_pool(origin)
    return pool


def _new_pool(origin: str) -> urllib3.PoolManager:
    import requests.utils  # the environment's proxy rules, as requests reads them

    options: dict[str, Any] = {
        "maxsize": POOL_MAXSIZE,
        "retries": False,
        "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
    }
    proxy = requests.utils.get_environ_proxies(origin).get(origin.partition(":")[0])
    if proxy:
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


def _forget_pools_after_fork() -> None:
    global _pools_pid
    _pools.clear()
    _pools_pid = None


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _cause(exc: BaseException) -> str:
    """The innermost reason (refused, reset, timed out), without the URL."""
    inner: BaseException = exc
    while True:
        nested = getattr(inner, "reason", None) or inner.__context__
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    return f"{type(inner).__name__}"[:100]
