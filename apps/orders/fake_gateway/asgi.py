"""The gateway over HTTP: a small ASGI app (no framework) in front of `core.Gateway`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .core import MAX_BODY_BYTES, OPERATION_PATH, TIMEOUT_HOLD_S, BadRequest, Gateway, Reply

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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

        match = OPERATION_PATH.match(path)
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
