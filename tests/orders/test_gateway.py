"""The fake payment gateway (a real process) and the client the orders saga calls.

Every token of the contract's table, idempotent replays that never count twice, and the
errors the saga turns into retries or failure reasons.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import requests

from apps.orders import payments
from apps.orders.payments import (
    PaymentDeclined,
    PaymentRejected,
    PaymentTimeout,
    PaymentUnavailable,
)
from tasks.errors import Permanent, Transient

from ..conftest import GATEWAY_DELAY_MS
from ..harness import free_port

pytestmark = pytest.mark.live


@pytest.fixture
def gateway(live_gateway: str, settings: Any) -> str:
    """The live gateway, with the client pointed at it."""
    settings.PAYMENT_GATEWAY_URL = live_gateway
    settings.PAYMENT_GATEWAY_TIMEOUT_S = 5.0
    return live_gateway


def _stats(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/v1/stats", timeout=5)
    assert response.status_code == 200
    return response.json()


def _post(url: str, path: str, body: Any, key: str | None = "k-1") -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    data = body if isinstance(body, str | bytes) else None
    return requests.post(
        url + path,
        json=None if data is not None else body,
        data=data,
        headers=headers,
        timeout=5,
    )


def _authorize(reference: str, token: str, amount: str = "12.50", key: str = "") -> str:
    return payments.authorize(
        reference=reference,
        amount=Decimal(amount),
        token=token,
        idempotency_key=key or f"{reference}-authorize",
    )


def _totals(stats: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {
        e: (stats[e]["count"], stats[e]["amount"]) for e in ("authorized", "captured", "voided")
    }


# --- tokens -------------------------------------------------------------------------------


def test_tok_ok_authorizes_and_captures(gateway: str) -> None:
    authorization_id = _authorize("order-1", "tok_ok")
    assert authorization_id.startswith("auth_")
    payments.capture(
        authorization_id=authorization_id, amount=Decimal("12.50"), idempotency_key="order-1-cap"
    )
    stats = _stats(gateway)
    assert _totals(stats) == {
        "authorized": (1, "12.50"),
        "captured": (1, "12.50"),
        "voided": (0, "0.00"),
    }
    assert stats["by_reference"] == {
        "order-1": {"authorized": 1, "captured": 1, "voided": 0, "captured_amount": "12.50"}
    }


def test_tok_decline_is_a_permanent_payment_declined(gateway: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="apps.orders.payments")
    with pytest.raises(PaymentDeclined) as raised:
        _authorize("order-1", "tok_decline")
    assert isinstance(raised.value, Permanent)
    assert raised.value.reason == "payment_declined"
    assert (raised.value.status_code, raised.value.code) == (402, "declined")
    assert _totals(_stats(gateway))["authorized"] == (0, "0.00")
    # The card token appears neither in the log nor in the error the saga records.
    assert "payment authorize order-1 -> 402" in caplog.text
    assert "tok_" not in caplog.text
    assert "tok_" not in str(raised.value)


def test_tok_timeout_raises_payment_timeout_after_the_client_timeout(
    gateway: str, settings: Any
) -> None:
    settings.PAYMENT_GATEWAY_TIMEOUT_S = 0.5
    for _ in range(2):  # a retry with the same key times out the same way
        started = time.monotonic()
        with pytest.raises(PaymentTimeout) as raised:
            _authorize("order-1", "tok_timeout")
        # The client gave up, not the gateway (which holds the request for 30 s).
        assert time.monotonic() - started < 10
        assert isinstance(raised.value, Transient)
        assert raised.value.reason == "payment_timeout"
    assert _totals(_stats(gateway))["authorized"] == (0, "0.00")


def test_tok_flaky_fails_once_per_kind_then_succeeds_with_the_same_key(gateway: str) -> None:
    with pytest.raises(PaymentUnavailable) as raised:
        _authorize("order-1", "tok_flaky")
    assert isinstance(raised.value, Transient)
    assert raised.value.status_code == 503
    assert _totals(_stats(gateway))["authorized"] == (0, "0.00")
    authorization_id = _authorize("order-1", "tok_flaky")

    capture: dict[str, Any] = {
        "authorization_id": authorization_id,
        "idempotency_key": "order-1-capture",
    }
    with pytest.raises(PaymentUnavailable):
        payments.capture(**capture)
    payments.capture(**capture)
    payments.capture(**capture)  # a replay: answered, not counted

    with pytest.raises(PaymentUnavailable):  # another reference fails first too
        _authorize("order-2", "tok_flaky")
    other = _authorize("order-2", "tok_flaky")
    assert _authorize("order-2", "tok_flaky") == other  # a replay
    with pytest.raises(PaymentUnavailable):
        payments.void(authorization_id=other, idempotency_key="order-2-void")
    payments.void(authorization_id=other, idempotency_key="order-2-void")

    stats = _stats(gateway)
    assert _totals(stats) == {
        "authorized": (2, "25.00"),
        "captured": (1, "12.50"),
        "voided": (1, "12.50"),
    }
    assert stats["replays"] == 2


def test_tok_capture_fails_declines_capture_and_voids(gateway: str) -> None:
    authorization_id = _authorize("order-1", "tok_capture_fails")
    with pytest.raises(PaymentDeclined) as raised:
        payments.capture(authorization_id=authorization_id, idempotency_key="order-1-capture")
    assert raised.value.reason == "capture_failed"
    assert raised.value.code == "capture_declined"
    payments.void(authorization_id=authorization_id, idempotency_key="order-1-void")
    stats = _stats(gateway)
    assert _totals(stats) == {
        "authorized": (1, "12.50"),
        "captured": (0, "0.00"),
        "voided": (1, "12.50"),
    }
    assert stats["by_reference"]["order-1"]["voided"] == 1


def test_tok_void_fails_until_the_gateway_recovers(gateway: str) -> None:
    authorization_id = _authorize("order-1", "tok_void_fails")
    with pytest.raises(PaymentDeclined) as declined:
        payments.capture(authorization_id=authorization_id, idempotency_key="order-1-capture")
    assert declined.value.reason == "capture_failed"
    void: dict[str, Any] = {"authorization_id": authorization_id, "idempotency_key": "order-1-void"}
    for _ in range(3):
        with pytest.raises(PaymentUnavailable) as raised:
            payments.void(**void)
        assert raised.value.status_code == 503
    assert _stats(gateway)["voided"]["count"] == 0

    assert requests.post(f"{gateway}/v1/control/recover", timeout=5).status_code == 200
    payments.void(**void)
    payments.void(**void)
    assert _stats(gateway)["voided"] == {"count": 1, "amount": "12.50"}

    # And back to failing, for the next scenario.
    assert requests.post(f"{gateway}/v1/control/fail-voids", timeout=5).status_code == 200
    second = _authorize("order-2", "tok_void_fails")
    with pytest.raises(PaymentUnavailable):
        payments.void(authorization_id=second, idempotency_key="order-2-void")
    assert _stats(gateway)["voided"]["count"] == 1


def test_tok_slow_answers_late_but_succeeds(gateway: str) -> None:
    started = time.monotonic()
    authorization_id = _authorize("order-1", "tok_slow")
    assert time.monotonic() - started >= GATEWAY_DELAY_MS / 1000
    payments.capture(authorization_id=authorization_id, idempotency_key="order-1-capture")
    assert _totals(_stats(gateway))["captured"] == (1, "12.50")


def test_unknown_token_is_rejected(gateway: str) -> None:
    with pytest.raises(PaymentRejected) as raised:
        _authorize("order-1", "tok_nope")
    assert isinstance(raised.value, Permanent)
    assert (raised.value.status_code, raised.value.code) == (400, "invalid_token")


# --- idempotency and no double charge ----------------------------------------------------


def test_same_key_twice_authorizes_once(gateway: str) -> None:
    first = _authorize("order-1", "tok_ok", key="order-1-authorize")
    assert _authorize("order-1", "tok_ok", key="order-1-authorize") == first
    capture: dict[str, Any] = {"authorization_id": first, "idempotency_key": "order-1-capture"}
    payments.capture(**capture)
    payments.capture(**capture)
    stats = _stats(gateway)
    assert _totals(stats) == {
        "authorized": (1, "12.50"),
        "captured": (1, "12.50"),
        "voided": (0, "0.00"),
    }
    assert stats["replays"] == 2


def test_same_key_replays_status_and_body_exactly(gateway: str) -> None:
    body = {"amount": "9.99", "currency": "EUR", "token": "tok_ok", "reference": "r-1"}
    first = _post(gateway, "/v1/authorizations", body)
    again = _post(gateway, "/v1/authorizations", body)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    declined = {**body, "token": "tok_decline", "reference": "r-2"}
    assert _post(gateway, "/v1/authorizations", declined, key="k-2").status_code == 402
    replayed = _post(gateway, "/v1/authorizations", declined, key="k-2")
    assert (replayed.status_code, replayed.json()) == (402, {"error": "declined"})
    assert _stats(gateway)["authorized"]["count"] == 1


def test_same_key_with_another_body_is_409(gateway: str) -> None:
    _authorize("order-1", "tok_ok", amount="10.00", key="shared-key")
    with pytest.raises(PaymentRejected) as raised:
        _authorize("order-1", "tok_ok", amount="11.00", key="shared-key")
    assert (raised.value.status_code, raised.value.code) == (409, "idempotency_key_reused")
    # Another endpoint with the same key is another request too.
    authorization_id = _authorize("order-2", "tok_ok")
    with pytest.raises(PaymentRejected):
        payments.capture(authorization_id=authorization_id, idempotency_key="shared-key")
    assert _totals(_stats(gateway))["authorized"] == (2, "22.50")


def test_second_capture_under_another_key_is_refused(gateway: str) -> None:
    authorization_id = _authorize("order-1", "tok_ok")
    payments.capture(authorization_id=authorization_id, idempotency_key="capture-a")
    with pytest.raises(PaymentRejected) as raised:
        payments.capture(authorization_id=authorization_id, idempotency_key="capture-b")
    assert (raised.value.status_code, raised.value.code) == (409, "already_captured")
    with pytest.raises(PaymentRejected) as refused_void:
        payments.void(authorization_id=authorization_id, idempotency_key="void-a")
    assert refused_void.value.code == "already_captured"
    assert _totals(_stats(gateway))["captured"] == (1, "12.50")
    assert _stats(gateway)["voided"]["count"] == 0


def test_concurrent_retries_with_one_key_authorize_once(gateway: str) -> None:
    def call(token: str) -> str:
        return _authorize(f"order-{token}", token, key=f"key-{token}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        ok_ids = set(pool.map(call, ["tok_ok"] * 16))
        slow_ids = set(pool.map(call, ["tok_slow"] * 16))
    assert len(ok_ids) == len(slow_ids) == 1
    stats = _stats(gateway)
    assert stats["authorized"]["count"] == 2
    assert stats["replays"] == 30


def test_stats_by_reference(gateway: str) -> None:
    tokens = {
        "order-1": "tok_ok",
        "order-2": "tok_decline",
        "order-3": "tok_capture_fails",
        "order-4": "tok_ok",
        "order-5": "tok_void_fails",
    }
    authorizations: dict[str, str] = {}
    for reference, token in tokens.items():
        with contextlib.suppress(PaymentDeclined):
            authorizations[reference] = _authorize(reference, token, amount="20.00")
    for reference, authorization_id in authorizations.items():
        key = f"{reference}-capture"
        try:
            amount = Decimal("15.00") if reference == "order-4" else None  # a partial capture
            payments.capture(authorization_id=authorization_id, amount=amount, idempotency_key=key)
        except PaymentDeclined:
            with contextlib.suppress(PaymentUnavailable):  # tok_void_fails
                payments.void(authorization_id=authorization_id, idempotency_key=f"{reference}-v")
    stats = _stats(gateway)
    assert stats["by_reference"] == {
        "order-1": {"authorized": 1, "captured": 1, "voided": 0, "captured_amount": "20.00"},
        "order-3": {"authorized": 1, "captured": 0, "voided": 1, "captured_amount": "0.00"},
        "order-4": {"authorized": 1, "captured": 1, "voided": 0, "captured_amount": "15.00"},
        "order-5": {"authorized": 1, "captured": 0, "voided": 0, "captured_amount": "0.00"},
    }
    assert _totals(stats) == {
        "authorized": (4, "80.00"),
        "captured": (2, "35.00"),
        "voided": (1, "20.00"),
    }


def test_reset_forgets_everything(gateway: str) -> None:
    _authorize("order-1", "tok_ok", key="k")
    assert requests.post(f"{gateway}/v1/control/reset", timeout=5).status_code == 200
    stats = _stats(gateway)
    assert (stats["authorized"]["count"], stats["by_reference"], stats["replays"]) == (0, {}, 0)
    _authorize("order-1", "tok_ok", key="k")  # the key is new again
    assert _stats(gateway)["authorized"]["count"] == 1


# --- bad requests -------------------------------------------------------------------------


def test_bad_requests_are_400_and_change_nothing(gateway: str) -> None:
    good = {"amount": "1.00", "token": "tok_ok", "reference": "r"}
    cases: list[tuple[Any, str | None, int, str]] = [
        (good, None, 400, "idempotency_key_required"),
        ("{not json", "k-a", 400, "invalid_json"),
        ("[1, 2]", "k-b", 400, "invalid_json"),
        ({**good, "token": "tok_what"}, "k-c", 400, "invalid_token"),
        ({**good, "amount": "-1"}, "k-d", 400, "invalid_amount"),
        ({**good, "amount": "1.001"}, "k-e", 400, "invalid_amount"),
        ({**good, "amount": True}, "k-f", 400, "invalid_amount"),
        ({**good, "currency": "euro"}, "k-g", 400, "invalid_currency"),
        ({**good, "reference": ""}, "k-h", 400, "invalid_reference"),
    ]
    for body, key, status, code in cases:
        response = _post(gateway, "/v1/authorizations", body, key=key)
        assert (response.status_code, response.json()) == (status, {"error": code}), body
    missing = _post(gateway, "/v1/authorizations/auth_0123abcd/capture", {}, key="k-i")
    assert (missing.status_code, missing.json()) == (404, {"error": "authorization_not_found"})
    # An invalid request is not remembered: the key still works for a valid one.
    assert _post(gateway, "/v1/authorizations", good, key="k-c").status_code == 201
    assert _stats(gateway)["authorized"]["count"] == 1


def test_capture_more_than_authorized_is_refused(gateway: str) -> None:
    authorization_id = _authorize("order-1", "tok_ok", amount="5.00")
    with pytest.raises(PaymentRejected) as raised:
        payments.capture(
            authorization_id=authorization_id, amount=Decimal("5.01"), idempotency_key="c"
        )
    assert raised.value.code == "amount_exceeds_authorization"
    assert _stats(gateway)["captured"]["count"] == 0


def test_client_refuses_what_it_cannot_send_faithfully(gateway: str) -> None:
    with pytest.raises(ValueError, match="two decimals"):
        _authorize("order-1", "tok_ok", amount="1.005")
    with pytest.raises(ValueError):
        payments.void(authorization_id="../control/reset", idempotency_key="v")
    with pytest.raises(ValueError):
        payments.authorize(
            reference="r", amount=Decimal("1.00"), token="tok_ok", idempotency_key=""
        )
    assert _stats(gateway)["authorized"]["count"] == 0


# --- transport ----------------------------------------------------------------------------


def test_unreachable_gateway_is_transient(settings: Any) -> None:
    settings.PAYMENT_GATEWAY_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PaymentUnavailable) as raised:
        _authorize("order-1", "tok_ok")
    assert isinstance(raised.value, Transient)
    assert raised.value.reason == "payment_unavailable"


def test_one_pool_per_process_and_a_new_one_after_fork(gateway: str) -> None:
    _authorize("order-1", "tok_ok")
    session = payments._process_pool()
    assert payments._process_pool() is session
    pid = os.fork()
    if pid == 0:  # the child: no inherited session, and its own one works
        code = 1
        try:
            if payments._pool is None:
                _authorize("order-child", "tok_ok", key=f"child-{uuid.uuid4().hex}")
                code = 0 if payments._process_pool() is not session else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _stats(gateway)["by_reference"]["order-child"]["authorized"] == 1
