"""VAPID keys (RFC 8292) and browser subscription keys (RFC 8291): checks and, for
development, a key pair generated once.

Deliberately free of Django models, settings and HTTP: config/settings.py imports it while
the settings are being read.

VAPID keys are base64url raw keys: the private key is the 32-byte P-256 scalar, the public
key the 65-byte uncompressed point a browser takes as `applicationServerKey`. A browser
subscription is bound to that public key, so a key pair that changes invalidates every
subscription: in development the generated pair is kept in the git-ignored run folder and
reused on every start; in production empty keys are a configuration error, never a silent
new pair.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "DEV_VAPID_SUBJECT",
    "VAPID_KEY_FILE_NAME",
    "InvalidSubscriptionKeys",
    "VapidKeyPair",
    "b64url_decode",
    "b64url_encode",
    "subscription_keys_check",
    "vapid_keys_generate",
    "vapid_settings",
]

VAPID_KEY_FILE_NAME = "vapid-keys.json"
# A syntactically real address: some push services refuse a `sub` naming localhost.
DEV_VAPID_SUBJECT = "mailto:webpush-dev@example.com"
AUTH_SECRET_BYTES = 16
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
# mailto: with something@something, or an https: URL (RFC 8292 section 2.1).
_SUBJECT = re.compile(r"^(mailto:[^@\s]+@[^@\s]+|https://[^\s/]+(/\S*)?)$", re.IGNORECASE)


class VapidKeyPair(NamedTuple):
    public_key: str  # base64url, uncompressed P-256 point (65 bytes)
    private_key: str  # base64url, raw scalar (32 bytes)


class InvalidSubscriptionKeys(ValueError):
    """A browser subscription's `p256dh` or `auth` cannot be used; `field` names which."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (padding optional): standard base64's `+` and `/` are refused, as a
    browser's `PushSubscription.toJSON()` never produces them."""
    if not isinstance(text, str) or not _B64URL.match(text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def subscription_keys_check(*, p256dh: str, auth: str) -> None:
    """Raises InvalidSubscriptionKeys unless `p256dh` is a base64url uncompressed P-256 point
    and `auth` a base64url 16-byte secret: what RFC 8291 encryption needs. The API turns it
    into 400 `invalid` so a bad key fails at subscription time, not at every push."""
    try:
        point = b64url_decode(p256dh)
    except ValueError:
        raise InvalidSubscriptionKeys("p256dh", "not base64url") from None
    if len(point) != 65 or point[0] != 0x04:
        raise InvalidSubscriptionKeys("p256dh", "not an uncompressed P-256 point (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidSubscriptionKeys("p256dh", "not a point on P-256") from None
    try:
        secret = b64url_decode(auth)
    except ValueError:
        raise InvalidSubscriptionKeys("auth", "not base64url") from None
    if len(secret) != AUTH_SECRET_BYTES:
        raise InvalidSubscriptionKeys("auth", f"not {AUTH_SECRET_BYTES} bytes")


def vapid_keys_generate() -> VapidKeyPair:
    private = ec.generate_private_key(ec.SECP256R1())
    return VapidKeyPair(
        public_key=_public_raw(private.public_key()),
        private_key=b64url_encode(private.private_numbers().private_value.to_bytes(32, "big")),
    )


def vapid_settings(
    *, public_key: str, private_key: str, subject: str, debug: bool, run_dir: Path
) -> tuple[str, str, str]:
    """(VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY, VAPID_SUBJECT) for config/settings.py.

    Keys given: both are checked and must be one pair. None given: in development (`debug`)
    the pair in `run_dir`/vapid-keys.json, generated on first use, so restarts keep browser
    subscriptions valid; in production, Web Push is off (empty keys). An empty subject is
    DEV_VAPID_SUBJECT in development and an error in production when keys are given."""
    public_key, private_key, subject = public_key.strip(), private_key.strip(), subject.strip()
    if not (public_key or private_key or debug):
        # Production without keys: Web Push is off (no deliveries are made, the public key
        # reads ""), and everything else runs. A deployment that wants it sets the pair.
        return "", "", subject
    if not subject:
        if not debug:
            raise ImproperlyConfigured(
                "DJANGO_DEBUG=false needs VAPID_SUBJECT (a mailto: address push services "
                "can reach the operator at)."
            )
        subject = DEV_VAPID_SUBJECT
    if not _SUBJECT.match(subject):
        raise ImproperlyConfigured(f"VAPID_SUBJECT must be a mailto: or https: URI: {subject!r}")
    if public_key or private_key:
        if not (public_key and private_key):
            raise ImproperlyConfigured("VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY go together.")
        pair = _checked_pair(VapidKeyPair(public_key, private_key), source="VAPID_*_KEY")
        return pair.public_key, pair.private_key, subject
    pair = _dev_pair(Path(run_dir) / VAPID_KEY_FILE_NAME)
    return pair.public_key, pair.private_key, subject


def _dev_pair(path: Path) -> VapidKeyPair:
    """The development pair in `path`, created on first use. Several processes start at
    once (`make run`): the file appears whole or not at all (written aside, then hard-linked
    into place, which fails if another process won), and everyone reads the winner's."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = vapid_keys_generate()
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".vapid-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp's file is 0600: a private key
                json.dump(fresh._asdict(), out)
            # Another process may have won the race: its pair is read below.
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
    try:
        stored = json.loads(path.read_text())
        pair = VapidKeyPair(str(stored["public_key"]), str(stored["private_key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"{path} is not a VAPID key file ({exc}); delete it to generate a new pair "
            "(browsers then subscribe again)."
        ) from None
    return _checked_pair(pair, source=str(path))


def _checked_pair(pair: VapidKeyPair, *, source: str) -> VapidKeyPair:
    try:
        scalar = b64url_decode(pair.private_key)
        point = b64url_decode(pair.public_key)
    except ValueError:
        raise ImproperlyConfigured(f"{source}: VAPID keys must be base64url") from None
    if len(scalar) != 32:
        raise ImproperlyConfigured(f"{source}: VAPID private key must be 32 raw bytes")
    try:
        private = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except ValueError:
        raise ImproperlyConfigured(f"{source}: VAPID private key is not a P-256 key") from None
    if b64url_decode(_public_raw(private.public_key())) != point:
        raise ImproperlyConfigured(
            f"{source}: VAPID public key is not the private key's (or not an uncompressed "
            "P-256 point)"
        )
    # Normalised (no padding): the public key endpoint serves exactly what browsers take.
    return VapidKeyPair(b64url_encode(point), b64url_encode(scalar))


def _public_raw(public: ec.EllipticCurvePublicKey) -> str:
    return b64url_encode(
        public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
