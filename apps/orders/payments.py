"""The payment gateway client the orders saga calls: authorize, capture, void.

Invariant: every call carries the caller's idempotency key (the saga uses one per order and
operation, e.g. f"order-{id}-authorize"), and the gateway answers a repeated key with its
first answer without acting again, so a retried call with the same key never charges twice.
Retrying is therefore always safe, and the errors say when it is worth it:

- `PaymentTimeout` (Transient): no answer within the timeout. The call may or may not have
  taken effect; retry with the SAME key to find out. `reason` "payment_timeout".
- `PaymentUnavailable` (Transient): connection refused or reset, 5xx, 429, a garbled answer.
  Retry with the same key. `reason` "payment_unavailable".
- `PaymentDeclined` (Permanent): the gateway said no (402). `reason` is "payment_declined"
  for an authorization, "capture_failed" for a capture.
- `PaymentRejected` (Permanent): any other 4xx (unknown token or authorization, a key reused
  for another request, already captured...). `code` is the gateway's error code.

The saga orchestrator reads `reason` from the error that ends a step, so a step whose retries
ran out on timeouts fails with `payment_timeout`.

Calls run outside any database transaction: a call inside one would hold its connection
idle in transaction (and any row lock taken before it) for as long as the gateway takes.
Each call checks it and raises RuntimeError instead (the saga's payment steps are remote
steps, tasks/saga/).

Settings (read at each call, so tests may override them): PAYMENT_GATEWAY_URL (default
http://127.0.0.1:8010), PAYMENT_GATEWAY_TIMEOUT_S (read timeout, default 2 s; connecting
gets 1 s). The card token is sent to the gateway and never logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from django.conf import settings
from django.db import connection
from urllib3.exceptions import NewConnectionError

from tasks.errors import Permanent, Transient

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8010"
DEFAULT_READ_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
CENTS = Decimal("0.01")
# Authorization ids go into the URL path: nothing that could change the path gets through.
_AUTHORIZATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

__all__ = [
    "PaymentDeclined",
    "PaymentError",
    "PaymentRejected",
    "PaymentTimeout",
    "PaymentUnavailable",
    "authorize",
    "capture",
    "void",
]


# --- Errors -------------------------------------------------------------------------------


class PaymentError(Exception):
    """Base of every error of this client; `operation` is "authorize", "capture" or "void"."""

    reason = "payment_error"

    def __init__(
        self,
        detail: str,
        *,
        operation: str,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.operation = operation
        self.status_code = status_code
        self.code = code


class PaymentTimeout(PaymentError, Transient):
    """No answer in time; the call may have taken effect. Retry with the same key."""

    reason = "payment_timeout"


class PaymentUnavailable(PaymentError, Transient):
    """The gateway could not be reached or said "not now" (5xx, 429). Retry with the same key."""

    reason = "payment_unavailable"


class PaymentDeclined(PaymentError, Permanent):
    """The gateway refused the payment (402); `reason` is the order's failure_reason."""

    def __init__(
        self,
        detail: str,
        *,
        operation: str,
        reason: str,
        status_code: int | None = 402,
        code: str | None = None,
    ) -> None:
        super().__init__(detail, operation=operation, status_code=status_code, code=code)
        self.reason = reason


class PaymentRejected(PaymentError, Permanent):
    """Any other 4xx: the request itself is wrong and retrying it cannot help."""

    reason = "payment_rejected"


# --- Connection pool ----------------------------------------------------------------------
# urllib3 directly, not requests: a saga turn makes two calls, and requests' own layer
# (sessions, hooks, header dicts, adapters) cost ~0.35 ms of CPU per call on top of
# urllib3's ~0.45 ms (bench/RESULTS.md, orders). Proxies from the environment are honoured,
# read once per gateway URL.

_POOL_MAXSIZE = 64
_pool: urllib3.PoolManager | None = None  # the process's pool (direct connections)
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _process_pool() -> urllib3.PoolManager:
    """One pool per process. A forked child (a Celery pool process) must not reuse its
    parent's sockets, so the pid is checked and a new pool made after a fork."""
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _pool_lock:
            if _pool is None or _pool_pid != pid:
                # No retries here: the caller retries, with backoff, the same key. Up to
                # _POOL_MAXSIZE connections kept per host: the saga worker's threads
                # (Procfile worker_saga) call at once; a smaller pool would reconnect.
                _pool, _pool_pid = _new_pool(None), pid
    return _pool


def _new_pool(proxy_url: str | None) -> urllib3.PoolManager:
    options: dict[str, Any] = {
        "maxsize": _POOL_MAXSIZE,
        "retries": False,
        # The bundle the environment names, else the system's trust store.
        "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
    }
    if proxy_url:
        return urllib3.ProxyManager(proxy_url, **options)
    return urllib3.PoolManager(**options)


_proxy_pools: dict[tuple[int, str], urllib3.PoolManager] = {}


def _pool_for(base_url: str) -> urllib3.PoolManager:
    """The pool to reach the gateway through: the environment's proxy for its URL, if any."""
    proxy = _proxies_for(base_url).get(urlsplit(base_url).scheme)
    if not proxy:
        return _process_pool()
    key = (os.getpid(), proxy)
    with _pool_lock:
        if key not in _proxy_pools:
            _proxy_pools[key] = _new_pool(proxy)
        return _proxy_pools[key]


@functools.lru_cache(maxsize=8)
def _proxies_for(base_url: str) -> dict[str, str]:
    """The environment's proxies (HTTP_PROXY, NO_PROXY...) for the gateway's URL."""
    return dict(requests.utils.get_environ_proxies(base_url))


def _forget_pools_after_fork() -> None:
    global _pool, _pool_pid
    _pool, _pool_pid = None, None
    _proxy_pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


# --- Calls --------------------------------------------------------------------------------


def authorize(*, reference: str, amount: Decimal, token: str, idempotency_key: str) -> str:
    """Authorizes (holds) `amount` on the card `token` for `reference`; returns the
    authorization id. A retried call with the same key never authorizes twice: the gateway
    answers it with the first authorization."""
    body = {"amount": _money(amount), "token": token, "reference": reference}
    answer = _post(
        "authorize",
        "/v1/authorizations",
        body,
        idempotency_key=idempotency_key,
        declined_reason="payment_declined",
        log_ref=reference,
    )
    authorization_id = answer.get("id")
    if not isinstance(authorization_id, str) or not _AUTHORIZATION_ID.match(authorization_id):
        raise PaymentUnavailable(
            "gateway answered without an authorization id", operation="authorize"
        )
    return authorization_id


def capture(*, authorization_id: str, amount: Decimal | None = None, idempotency_key: str) -> None:
    """Captures (charges) `amount` (default: all) of an authorization. A retried call with
    the same key never charges twice; a capture of an already captured authorization under
    another key is refused (`PaymentRejected`, code "already_captured")."""
    body: dict[str, Any] = {} if amount is None else {"amount": _money(amount)}
    _post(
        "capture",
        f"/v1/authorizations/{_checked_id(authorization_id)}/capture",
        body,
        idempotency_key=idempotency_key,
        declined_reason="capture_failed",
        log_ref=authorization_id,
    )


def void(*, authorization_id: str, idempotency_key: str) -> None:
    """Releases an authorization that will not be captured. Voiding twice is harmless; a
    captured authorization cannot be voided (`PaymentRejected`, code "already_captured")."""
    _post(
        "void",
        f"/v1/authorizations/{_checked_id(authorization_id)}/void",
        {},
        idempotency_key=idempotency_key,
        declined_reason="void_failed",
        log_ref=authorization_id,
    )


def _post(
    operation: str,
    path: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    declined_reason: str,
    log_ref: str,
) -> dict[str, Any]:
    if not idempotency_key:
        raise ValueError("an idempotency key is required")
    if connection.in_atomic_block:
        # Not an assert: it must hold with -O too. Not transient: retrying cannot help.
        raise RuntimeError(
            f"payment {operation} called inside a database transaction: call the gateway "
            "outside transaction.atomic() (a remote saga step)"
        )
    base_url = str(getattr(settings, "PAYMENT_GATEWAY_URL", DEFAULT_URL) or DEFAULT_URL)
    read_timeout = float(getattr(settings, "PAYMENT_GATEWAY_TIMEOUT_S", DEFAULT_READ_TIMEOUT_S))
    started = time.monotonic()
    try:
        response = _pool_for(base_url).request(
            "POST",
            base_url.rstrip("/") + path,
            body=json.dumps(body).encode(),
            headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"},
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout),
        )
    # A refused connection first: urllib3 makes it a kind of connect timeout.
    except NewConnectionError as exc:
        _log(operation, log_ref, "unreachable", started)
        raise PaymentUnavailable(
            f"{operation}: gateway unreachable ({type(exc).__name__}: {_cause(exc)})",
            operation=operation,
        ) from None
    except urllib3.exceptions.TimeoutError as exc:
        _log(operation, log_ref, "timeout", started)
        raise PaymentTimeout(
            f"{operation}: no answer from the gateway in time ({type(exc).__name__})",
            operation=operation,
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        _log(operation, log_ref, "unreachable", started)
        raise PaymentUnavailable(
            f"{operation}: gateway unreachable ({type(exc).__name__}: {_cause(exc)})",
            operation=operation,
        ) from None
    status = response.status
    _log(operation, log_ref, str(status), started)
    answer = _json(response.data)
    code = _error_code(status, answer)
    if status >= 500 or status == 429:
        raise PaymentUnavailable(
            f"{operation}: gateway answered {status}",
            operation=operation,
            status_code=status,
            code=code,
        )
    if status == 402:
        raise PaymentDeclined(
            f"{operation}: declined ({code or 'no code'})",
            operation=operation,
            reason=declined_reason,
            code=code,
        )
    if status >= 400:
        raise PaymentRejected(
            f"{operation}: gateway refused the request: {status} {code or ''}".rstrip(),
            operation=operation,
            status_code=status,
            code=code,
        )
    if not isinstance(answer, dict):
        # Something answered 2xx but not the gateway's JSON (a proxy?): ask again, same key.
        raise PaymentUnavailable(
            f"{operation}: unreadable answer ({status})", operation=operation, status_code=status
        )
    return answer


def _cause(exc: BaseException) -> str:
    """The innermost reason (refused, reset, ...): what an operator needs, without the URL
    (the request body, with the card token, is never part of it)."""
    inner: BaseException = exc
    while True:
        nested = getattr(inner, "reason", None) or inner.__context__
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    return f"{type(inner).__name__}: {inner}"[:200]


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return None


def _error_code(status: int, answer: Any) -> str | None:
    if status < 400 or not isinstance(answer, dict):
        return None
    code = answer.get("error")
    return code if isinstance(code, str) else None


def _money(amount: Decimal) -> str:
    """ "12.50": a positive amount in cents; never rounded, as that would change the charge."""
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise ValueError(f"invalid amount: {amount!r}")
    quantized = amount.quantize(CENTS)
    if quantized != amount:
        raise ValueError(f"amount has more than two decimals: {amount}")
    return str(quantized)


def _checked_id(authorization_id: str) -> str:
    if not isinstance(authorization_id, str) or not _AUTHORIZATION_ID.match(authorization_id):
        raise ValueError(f"invalid authorization id: {authorization_id!r}")
    return authorization_id


def _log(operation: str, ref: str, outcome: str, started: float) -> None:
    # The reference or authorization id only: the card token is never logged.
    logger.debug(
        "payment %s %s -> %s in %.0f ms",
        operation,
        ref,
        outcome,
        (time.monotonic() - started) * 1000,
    )
