"""A fake card payment gateway for development and tests (the Procfile's `gateway`).

    python -m apps.orders.fake_gateway --host 127.0.0.1 --port 8010

A stand-in for a card processor's test mode, NOT a payment system: every piece of state
(authorizations, remembered idempotency keys, counters) lives in this one process's memory and
is gone when it stops. It imports nothing from Django, so it starts in a blink and runs on its
own; it is a plain ASGI app served by uvicorn in a single asyncio process, so a `tok_timeout`
or `tok_slow` request that sleeps never holds up the others.

The behaviour of an authorization is chosen by its `token`, as in the payment test tokens
table of the API contract (Orders):
    tok_ok             authorizes and captures
    tok_decline        authorization declined (402)
    tok_timeout        no answer: the request is held until the client gives up
    tok_flaky          503 on the first call of each kind (authorize per reference, capture
                       and void per authorization), then succeeds
    tok_capture_fails  authorizes, capture declined (402)
    tok_void_fails     authorizes, capture declined, void 503 until /v1/control/recover
    tok_slow           answers after FAKE_GATEWAY_DELAY_MS (default 200) ms
An unknown token is 400 `invalid_token`.

HTTP API (JSON in and out; amounts are decimal strings such as "12.50"):

    POST /v1/authorizations               {amount, currency?, token, reference}
         201 {id, status: "authorized", amount, currency, reference} | 402 {error: "declined"}
    POST /v1/authorizations/{id}/capture  {amount?}
         200 {id, status: "captured", amount} | 402 {error: "capture_declined"}
         | 409 {error: "already_captured" | "already_voided"}
    POST /v1/authorizations/{id}/void     {}
         200 {id, status: "voided"} | 503 (tok_void_fails until recovered)
         | 409 {error: "already_captured"}
    GET  /v1/stats            what was authorized, captured and voided, in total and per reference
    POST /v1/control/recover  voids stop failing for tok_void_fails
    POST /v1/control/fail-voids   ... and fail again
    POST /v1/control/reset    forget everything
    GET  /health

Idempotency: every POST under /v1/authorizations needs an `Idempotency-Key` header (400
without). The first final answer (2xx or 402) for a key is remembered with the request it
answered; the same key with the same request gets that answer again and changes nothing (the
counters in /v1/stats do not move), the same key with a different request gets 409
`idempotency_key_reused`. Answers that say "try again" (503, the `tok_timeout` non-answer) and
invalid requests are not remembered, so a retry with the same key is processed afresh. Each
effect (authorized, captured, voided) is counted at most once per authorization: a second
capture is refused with 409 `already_captured`, a second void answers `voided` again without
counting. The effect happens before a `tok_slow` answer is delayed, as with a real gateway
whose answer is late: that is exactly the case a retry with the same key must survive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKENS = frozenset(
    {
        "tok_ok",
        "tok_decline",
        "tok_timeout",
        "tok_flaky",
        "tok_capture_fails",
        "tok_void_fails",
        "tok_slow",
    }
)
# Far beyond any client timeout: what matters is that the client gives up first.
TIMEOUT_HOLD_S = 30.0
MAX_BODY_BYTES = 64 * 1024
MAX_AMOUNT = Decimal("1000000000")
CENTS = Decimal("0.01")
EFFECTS = ("authorized", "captured", "voided")

_OPERATION_PATH = re.compile(
    r"^/v1/authorizations/(?P<id>auth_[0-9a-f]{1,64})/(?P<op>capture|void)$"
)
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass
class Reply:
    """An answer; `remember` says whether it is the final one for its idempotency key."""

    status: int
    body: dict[str, Any]
    remember: bool = False


@dataclass
class Remembered:
    fingerprint: str
    status: int
    body: dict[str, Any]
    token: str


@dataclass
class Authorization:
    id: str
    reference: str
    token: str
    amount: Decimal
    currency: str
    status: str = "authorized"  # -> "captured" | "voided"
    captured_amount: Decimal | None = None


@dataclass
class Totals:
    count: int = 0
    amount: Decimal = field(default_factory=Decimal)


class BadRequest(Exception):
    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


class Gateway:
    """The in-memory state and the rules. Every method runs between two awaits of the event
    loop, so a check and the write that follows it can never interleave with another request:
    that is what makes "remembered once" and "counted once" hold without locks."""

    def __init__(self, *, delay_s: float) -> None:
        self.delay_s = delay_s
        self.reset()

    def reset(self) -> None:
        self.authorizations: dict[str, Authorization] = {}
        self.remembered: dict[str, Remembered] = {}
        # (kind, authorization id or reference) already answered 503 once, for tok_flaky.
        self.flaky_seen: set[tuple[str, str]] = set()
        self.voids_failing = True
        self.totals = {effect: Totals() for effect in EFFECTS}
        self.by_reference: dict[str, dict[str, Any]] = {}
        self.replays = 0

    # --- idempotency ---------------------------------------------------------------------

    def replay(self, key: str, fingerprint: str) -> Remembered | Reply | None:
        """The remembered answer for `key`, a 409 if the key was used for another request,
        or None if the key is new."""
        remembered = self.remembered.get(key)
        if remembered is None:
            return None
        if remembered.fingerprint != fingerprint:
            return Reply(409, {"error": "idempotency_key_reused"})
        self.replays += 1
        return remembered

    def remember(self, key: str, fingerprint: str, reply: Reply, token: str) -> None:
        if reply.remember:
            self.remembered[key] = Remembered(fingerprint, reply.status, reply.body, token)

    # --- operations ----------------------------------------------------------------------

    def token_of_request(self, op: str, auth_id: str | None, payload: dict[str, Any]) -> str:
        if op == "authorize":
            token = payload.get("token")
            return token if isinstance(token, str) else ""
        authorization = self.authorizations.get(auth_id or "")
        return authorization.token if authorization else ""

    def first_call_fails(self, kind: str, subject: str) -> bool:
        """tok_flaky: True the first time `kind` is called for `subject`, then never again."""
        if (kind, subject) in self.flaky_seen:
            return False
        self.flaky_seen.add((kind, subject))
        return True

    def authorize(self, payload: dict[str, Any]) -> Reply:
        token = payload.get("token")
        if not isinstance(token, str) or token not in TOKENS:
            raise BadRequest("invalid_token")
        reference = payload.get("reference")
        if not isinstance(reference, str) or not 0 < len(reference) <= 200:
            raise BadRequest("invalid_reference")
        amount = _amount(payload.get("amount"))
        currency = payload.get("currency", "EUR")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise BadRequest("invalid_currency")
        if token == "tok_flaky" and self.first_call_fails("authorize", reference):
            return Reply(503, {"error": "unavailable"})
        if token == "tok_decline":
            return Reply(402, {"error": "declined"}, remember=True)
        authorization = Authorization(
            id=f"auth_{uuid.uuid4().hex}",
            reference=reference,
            token=token,
            amount=amount,
            currency=currency,
        )
        self.authorizations[authorization.id] = authorization
        self._count(authorization, "authorized", amount)
        body = {
            "id": authorization.id,
            "status": "authorized",
            "amount": _money(amount),
            "currency": currency,
            "reference": reference,
        }
        return Reply(201, body, remember=True)

    def capture(self, auth_id: str, payload: dict[str, Any]) -> Reply:
        authorization = self._authorization(auth_id)
        amount = authorization.amount
        if payload.get("amount") is not None:
            amount = _amount(payload["amount"])
            if amount > authorization.amount:
                raise BadRequest("amount_exceeds_authorization")
        if authorization.token == "tok_flaky" and self.first_call_fails("capture", auth_id):
            return Reply(503, {"error": "unavailable"})
        if authorization.status != "authorized":
            return Reply(409, {"error": f"already_{authorization.status}"})
        if authorization.token in ("tok_capture_fails", "tok_void_fails"):
            return Reply(402, {"error": "capture_declined"}, remember=True)
        authorization.status = "captured"
        authorization.captured_amount = amount
        self._count(authorization, "captured", amount)
        body = {"id": auth_id, "status": "captured", "amount": _money(amount)}
        return Reply(200, body, remember=True)

    def void(self, auth_id: str) -> Reply:
        authorization = self._authorization(auth_id)
        if authorization.token == "tok_void_fails" and self.voids_failing:
            return Reply(503, {"error": "unavailable"})
        if authorization.token == "tok_flaky" and self.first_call_fails("void", auth_id):
            return Reply(503, {"error": "unavailable"})
        if authorization.status == "captured":
            return Reply(409, {"error": "already_captured"})
        if authorization.status == "authorized":
            authorization.status = "voided"
            self._count(authorization, "voided", authorization.amount)
        # Voiding a voided authorization is a no-op success: the caller's goal holds.
        return Reply(200, {"id": auth_id, "status": "voided"}, remember=True)

    def _authorization(self, auth_id: str) -> Authorization:
        authorization = self.authorizations.get(auth_id)
        if authorization is None:
            raise BadRequest("authorization_not_found", status=404)
        return authorization

    def _count(self, authorization: Authorization, effect: str, amount: Decimal) -> None:
        totals = self.totals[effect]
        totals.count += 1
        totals.amount += amount
        row = self.by_reference.setdefault(
            authorization.reference,
            {"authorized": 0, "captured": 0, "voided": 0, "captured_amount": Decimal(0)},
        )
        row[effect] += 1
        if effect == "captured":
            row["captured_amount"] += amount

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            effect: {"count": totals.count, "amount": _money(totals.amount)}
            for effect, totals in self.totals.items()
        }
        result["by_reference"] = {
            reference: {**row, "captured_amount": _money(row["captured_amount"])}
            for reference, row in self.by_reference.items()
        }
        result["replays"] = self.replays
        result["voids_failing"] = self.voids_failing
        return result


def _amount(value: Any) -> Decimal:
    """A positive amount with at most two decimals, from a string or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest("invalid_amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise BadRequest("invalid_amount") from None
    if (
        not amount.is_finite()
        or amount <= 0
        or amount > MAX_AMOUNT
        or amount != amount.quantize(CENTS)
    ):
        raise BadRequest("invalid_amount")
    return amount.quantize(CENTS)


def _money(amount: Decimal) -> str:
    return str(amount.quantize(CENTS))


# --- ASGI ---------------------------------------------------------------------------------


class Disconnected(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest("body_too_large", status=413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class GatewayApp:
    """The ASGI application around one `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        try:
            await self._handle(scope, receive, send)
        except BadRequest as exc:
            await _send_json(send, exc.status, {"error": exc.code})
        except Disconnected:
            pass

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        gateway = self.gateway
        if method == "GET" and path == "/health":
            return await _send_json(send, 200, {"status": "ok"})
        if method == "GET" and path == "/v1/stats":
            return await _send_json(send, 200, gateway.stats())
        if method == "POST" and path.startswith("/v1/control/"):
            await _read_body(receive)
            action = path.removeprefix("/v1/control/")
            if action == "reset":
                gateway.reset()
            elif action == "recover":
                gateway.voids_failing = False
            elif action == "fail-voids":
                gateway.voids_failing = True
            else:
                raise BadRequest("not_found", status=404)
            return await _send_json(
                send, 200, {"status": "ok", "voids_failing": gateway.voids_failing}
            )

        match = _OPERATION_PATH.match(path)
        if path == "/v1/authorizations":
            op, auth_id = "authorize", None
        elif match:
            op, auth_id = match["op"], match["id"]
        else:
            raise BadRequest("not_found", status=404)
        if method != "POST":
            raise BadRequest("method_not_allowed", status=405)
        key = _header(scope, b"idempotency-key")
        if not key or len(key) > 255:
            raise BadRequest("idempotency_key_required")
        payload = _payload(await _read_body(receive), required=op == "authorize")
        fingerprint = f"{path}\n{json.dumps(payload, sort_keys=True)}"

        replayed = gateway.replay(key, fingerprint)
        if isinstance(replayed, Reply):
            return await _send_json(send, replayed.status, replayed.body)
        token = replayed.token if replayed else gateway.token_of_request(op, auth_id, payload)
        if token == "tok_timeout":
            # No effect and no answer: hold the request until the client gives up.
            try:
                await asyncio.wait_for(_until_disconnect(receive), timeout=TIMEOUT_HOLD_S)
            except TimeoutError:
                await _send_json(send, 504, {"error": "timeout"})
            return None
        if replayed is None:
            if op == "authorize":
                reply = gateway.authorize(payload)
            elif op == "capture":
                reply = gateway.capture(auth_id or "", payload)
            else:
                reply = gateway.void(auth_id or "")
            gateway.remember(key, fingerprint, reply, token)
            status, body = reply.status, reply.body
        else:
            status, body = replayed.status, replayed.body
        if token == "tok_slow" and gateway.delay_s > 0:
            await asyncio.sleep(gateway.delay_s)
        return await _send_json(send, status, body)


def _payload(raw: bytes, *, required: bool) -> dict[str, Any]:
    if not raw.strip() and not required:
        return {}
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("invalid_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("invalid_json")
    return payload


def create_app(*, delay_s: float) -> GatewayApp:
    return GatewayApp(Gateway(delay_s=delay_s))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Surge's fake payment gateway (dev and tests).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("FAKE_GATEWAY_PORT") or 8010)
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=float(os.environ.get("FAKE_GATEWAY_DELAY_MS") or 200),
        help="how late tok_slow answers (default: FAKE_GATEWAY_DELAY_MS or 200)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    config = uvicorn.Config(
        create_app(delay_s=args.delay_ms / 1000),
        host=args.host,
        port=args.port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Requests held by tok_timeout must not hold up a stop.
        timeout_graceful_shutdown=1,
    )
    print(f"fake payment gateway on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
