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

The package: `core` (state and rules), `asgi` (the HTTP app), `__main__` (the command).
"""

from __future__ import annotations

from .asgi import GatewayApp, create_app
from .core import EFFECTS, TOKENS, Gateway

__all__ = ["EFFECTS", "TOKENS", "Gateway", "GatewayApp", "create_app"]
