"""A stand-in for a browser push service (RFC 8030), for tests and the live broadcast
tests: a small HTTP/1.1 server on 127.0.0.1 in a thread of the test process.

It plays both sides a real deployment has: the browser (`subscribe()` makes a P-256 key
pair and a 16-byte auth secret and hands out `{endpoint, keys: {p256dh, auth}}`) and the
push service (it receives each push, checks it, decrypts it with the subscription's private
key and answers as told). Checks, written from the RFCs without the sender's libraries, so
a bug shared with pywebpush / http_ece / py_vapid would not hide here:

- VAPID (RFC 8292): `Authorization: vapid t=<JWT>, k=<public key>`; the JWT is ES256 and
  verifies with `k`; `aud` is this service's origin; `exp` is in the future and at most
  24 h away; `sub` is a mailto: or https: URI. If the subscription was made for an
  application server key, `k` must be it (403 otherwise, as browsers' push services do).
- Encryption (RFC 8291 / RFC 8188): `Content-Encoding: aes128gcm`, one record, the
  sender's ephemeral public key in the header, decrypted with ECDH + HKDF + AES-128-GCM.
- `TTL` present and a non-negative integer (RFC 8030 section 5.2).

A push that fails a check is answered 400/401/403 and kept in `rejections` (nothing is
delivered). One that passes gets the subscription's next scripted answer (201 by default,
the last answer repeats): a 2xx answer records it in `delivered`. Every request is in
`attempts`. Any process may post to it (a Celery worker in a live test): only the test
process reads what it recorded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Answer", "PushService", "ReceivedPush", "Rejection", "TestSubscription"]

MAX_VAPID_LIFETIME_S = 24 * 3600
PATH_PREFIX = "/push/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@dataclass(frozen=True)
class Answer:
    """What the push service answers a valid push: a status, and Retry-After if given."""

    status: int = 201
    retry_after: str | None = None


class PushRejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class TestSubscription:
    """One browser's subscription: what the browser keeps (private key, auth secret) and
    what it hands the application server (`as_json()`)."""

    __test__ = False  # not a pytest class, despite the name

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: str | None
    answers: list[Answer] = field(default_factory=lambda: [Answer(201)])

    @property
    def p256dh(self) -> str:
        return _b64url(_raw_public(self.private_key.public_key()))

    @property
    def auth(self) -> str:
        return _b64url(self.auth_secret)

    def as_json(self) -> dict[str, Any]:
        """What `PushSubscription.toJSON()` gives a page."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass(frozen=True)
class ReceivedPush:
    """A push that passed every check and was answered with a 2xx."""

    endpoint: str
    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    authorization: str
    claims: dict[str, Any]
    connection: tuple[str, int]  # the client's (host, port): one per TCP connection

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Attempt:
    endpoint: str
    status: int
    authorization: str | None
    ttl: str | None
    connection: tuple[str, int]


@dataclass(frozen=True)
class Rejection:
    endpoint: str
    status: int
    reason: str


class PushService:
    """Start it (or use it as a context manager), `subscribe()`, point the sender at the
    endpoints, then read `delivered_to(subscription)`, `attempts`, `rejections`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self._subscriptions: dict[str, TestSubscription] = {}
        self._answer_index: dict[str, int] = {}
        self.delivered: list[ReceivedPush] = []
        self.attempts: list[Attempt] = []
        self.rejections: list[Rejection] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open_connections: set[socket.socket] = set()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> PushService:
        handler = type("Handler", (_Handler,), {"service": self})
        self._server = ThreadingHTTPServer((self._host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for one poll
            name="push-service",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and drops the kept-alive connections too: a stopped push
        service answers nothing, also on connections a sender pooled."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._open_connections = self._open_connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> PushService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() the push service first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- the browser's side ---------------------------------------------------------------

    def subscribe(
        self, *answers: Answer | int, application_server_key: str | None = None
    ) -> TestSubscription:
        """A new subscription. `answers` script what valid pushes to it get, in order, the
        last one repeating (default: 201 forever); a plain int is that status."""
        token = secrets.token_urlsafe(16)
        subscription = TestSubscription(
            token=token,
            endpoint=f"{self.origin}{PATH_PREFIX}{token}",
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth_secret=secrets.token_bytes(16),
            application_server_key=application_server_key,
        )
        with self._lock:
            self._subscriptions[token] = subscription
        if answers:
            self.script(subscription, *answers)
        return subscription

    def subscribe_many(self, count: int, **options: Any) -> list[TestSubscription]:
        return [self.subscribe(**options) for _ in range(count)]

    def script(self, subscription: TestSubscription, *answers: Answer | int) -> None:
        if not answers:
            raise ValueError("at least one answer")
        with self._lock:
            subscription.answers = [a if isinstance(a, Answer) else Answer(a) for a in answers]
            self._answer_index[subscription.token] = 0

    def unsubscribe(self, subscription: TestSubscription) -> None:
        """The browser dropped it: pushes to its endpoint now get 410."""
        self.script(subscription, Answer(410))

    # --- what was received ----------------------------------------------------------------

    def delivered_to(self, subscriptions: TestSubscription | Iterable[TestSubscription]) -> Any:
        """The pushes delivered to one subscription (a list), or to each of several (a dict
        endpoint -> list)."""
        with self._lock:
            delivered = list(self.delivered)
        if isinstance(subscriptions, TestSubscription):
            return [p for p in delivered if p.endpoint == subscriptions.endpoint]
        by_endpoint: dict[str, list[ReceivedPush]] = {s.endpoint: [] for s in subscriptions}
        for push in delivered:
            if push.endpoint in by_endpoint:
                by_endpoint[push.endpoint].append(push)
        return by_endpoint

    def attempts_to(self, subscription: TestSubscription) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.endpoint == subscription.endpoint]

    # --- the push service's side ----------------------------------------------------------

    def _receive(
        self, path: str, headers: dict[str, str], body: bytes, client: tuple[str, int]
    ) -> Answer:
        endpoint = f"{self.origin}{path}"
        authorization = headers.get("authorization")
        answer = Answer(404)
        try:
            token = path.removeprefix(PATH_PREFIX) if path.startswith(PATH_PREFIX) else ""
            with self._lock:
                subscription = self._subscriptions.get(token)
            if subscription is None:
                raise PushRejected(404, "no such subscription")
            claims = self._check_vapid(authorization, subscription)
            ttl = self._check_ttl(headers.get("ttl"))
            if headers.get("content-encoding", "").lower() != "aes128gcm":
                raise PushRejected(400, "Content-Encoding is not aes128gcm")
            payload = decrypt_aes128gcm(body, subscription.private_key, subscription.auth_secret)
            with self._lock:
                index = self._answer_index.get(token, 0)
                answer = subscription.answers[min(index, len(subscription.answers) - 1)]
                self._answer_index[token] = index + 1
                if 200 <= answer.status < 300:
                    self.delivered.append(
                        ReceivedPush(
                            endpoint=endpoint,
                            payload=payload,
                            ttl=ttl,
                            urgency=headers.get("urgency"),
                            topic=headers.get("topic"),
                            authorization=authorization or "",
                            claims=claims,
                            connection=client,
                        )
                    )
        except PushRejected as rejected:
            answer = Answer(rejected.status)
            with self._lock:
                self.rejections.append(Rejection(endpoint, rejected.status, rejected.reason))
        with self._lock:
            self.attempts.append(
                Attempt(endpoint, answer.status, authorization, headers.get("ttl"), client)
            )
        return answer

    def _check_vapid(
        self, authorization: str | None, subscription: TestSubscription
    ) -> dict[str, Any]:
        if not authorization:
            raise PushRejected(401, "no Authorization")
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise PushRejected(401, f"Authorization scheme {scheme!r} is not vapid")
        parts: dict[str, str] = {}
        for item in params.split(","):
            name, _, value = item.strip().partition("=")
            parts[name.strip()] = value.strip()
        if "t" not in parts or "k" not in parts:
            raise PushRejected(401, "vapid Authorization without t= and k=")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), _unb64url(parts["k"])
            )
            header_b64, claims_b64, signature_b64 = parts["t"].split(".")
            header = json.loads(_unb64url(header_b64))
            claims = json.loads(_unb64url(claims_b64))
            signature = _unb64url(signature_b64)
        except ValueError as exc:
            raise PushRejected(401, f"unreadable VAPID token: {exc}") from None
        if header.get("alg") != "ES256" or len(signature) != 64:
            raise PushRejected(401, "VAPID token is not ES256")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PushRejected(401, "VAPID signature does not verify with k") from None
        if claims.get("aud") != self.origin:
            raise PushRejected(401, f"VAPID aud {claims.get('aud')!r} is not {self.origin}")
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int) or not now < exp <= now + MAX_VAPID_LIFETIME_S:
            raise PushRejected(401, f"VAPID exp {exp!r} is not within the next 24 h")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            raise PushRejected(401, f"VAPID sub {sub!r} is not mailto: or https:")
        expected_key = subscription.application_server_key
        if expected_key is not None and _unb64url(parts["k"]) != _unb64url(expected_key):
            raise PushRejected(403, "VAPID key is not the one the browser subscribed with")
        return claims

    @staticmethod
    def _check_ttl(value: str | None) -> int:
        if value is None or not value.strip().isdigit():
            raise PushRejected(400, f"TTL missing or not a non-negative integer: {value!r}")
        return int(value)


def decrypt_aes128gcm(
    body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes
) -> bytes:
    """RFC 8291 section 3.4 key derivation, RFC 8188 section 2 framing, one record."""
    if len(body) < 21:
        raise PushRejected(400, "body shorter than an aes128gcm header")
    salt = body[:16]
    (record_size,) = struct.unpack("!I", body[16:20])
    key_id_length = body[20]
    sender_public_raw = body[21 : 21 + key_id_length]
    ciphertext = body[21 + key_id_length :]
    if key_id_length != 65:
        raise PushRejected(400, "keyid is not the sender's 65-byte public key")
    if record_size < 18 or len(ciphertext) > record_size or len(ciphertext) < 17:
        raise PushRejected(400, "not exactly one aes128gcm record")
    try:
        sender_public = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), sender_public_raw
        )
    except ValueError:
        raise PushRejected(400, "keyid is not a P-256 point") from None
    shared = private_key.exchange(ec.ECDH(), sender_public)
    receiver_public_raw = _raw_public(private_key.public_key())

    def hmac_sha256(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    # IKM = HKDF(salt=auth_secret, ikm=ECDH secret, info="WebPush: info" 0 ua_pub as_pub)
    key_info = b"WebPush: info\x00" + receiver_public_raw + sender_public_raw
    ikm = hmac_sha256(hmac_sha256(auth_secret, shared), key_info + b"\x01")
    prk = hmac_sha256(salt, ikm)
    cek = hmac_sha256(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = hmac_sha256(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    try:
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)  # record 0: nonce XOR 0
    except InvalidTag:
        raise PushRejected(400, "payload does not decrypt (aes128gcm)") from None
    plaintext = padded.rstrip(b"\x00")
    if not plaintext.endswith(b"\x02"):  # the last (and only) record's delimiter
        raise PushRejected(400, "record is not marked last (delimiter 0x02)")
    return plaintext[:-1]


class _Handler(BaseHTTPRequestHandler):
    service: PushService
    protocol_version = "HTTP/1.1"  # keep-alive: the sender's pooled connections are reused

    def setup(self) -> None:
        super().setup()
        with self.service._lock:
            self.service._open_connections.add(self.connection)

    def finish(self) -> None:
        with self.service._lock:
            self.service._open_connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        client = (str(self.client_address[0]), int(self.client_address[1]))
        answer = self.service._receive(self.path, headers, body, client)
        self.send_response(answer.status)
        if answer.retry_after is not None:
            self.send_header("Retry-After", answer.retry_after)
        if 200 <= answer.status < 300:
            self.send_header("Location", f"{self.service.origin}/message/{secrets.token_hex(8)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output stays readable; `attempts` has every request
