"""Input checks whose failure must create nothing: topic slugs, Web Push endpoints and keys.

The endpoint check is what keeps the server from posting to arbitrary hosts (SSRF): only
the push services in `WEBPUSH_ALLOWED_HOSTS`, over https, except loopback hosts listed
there (development and the tests' local push service), which may use plain http.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from apps.core.errors import ErrorCode, SurgeError

from .errors import NotificationError
from .models import TOPIC_SLUG_PATTERN

_SLUG = re.compile(TOPIC_SLUG_PATTERN)
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_LOOPBACK_NAMES = {"localhost"}
P256_POINT_BYTES = 65  # 0x04 || X (32) || Y (32)
AUTH_SECRET_BYTES = 16


def _invalid(field: str, message: str) -> SurgeError:
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def check_topic_slug(slug: object) -> str:
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise _invalid("slug", "1 to 64 characters: lower-case letters, digits and '-'.")
    return slug


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`host` is an entry exactly, or a subdomain of an entry that starts with a dot."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.startswith("."):
            if host.endswith(entry) and len(host) > len(entry):
                return True
        elif host == entry:
            return True
    return False


def check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > 2048:
        raise _invalid("endpoint", "A push service URL is required.")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise _invalid("endpoint", "Not a URL.") from None
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise _invalid("endpoint", "Not a push service URL.")
    allowed = list(settings.WEBPUSH_ALLOWED_HOSTS)
    if not host_allowed(host, allowed) or (parts.scheme == "http" and not _is_loopback(host)):
        raise SurgeError(
            NotificationError.ENDPOINT_NOT_ALLOWED,
            "This push service is not allowed.",
            fields={"endpoint": ["Host not in WEBPUSH_ALLOWED_HOSTS, or not https."]},
        )
    return endpoint


def _b64url(value: object, field: str) -> bytes:
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value):
        raise _invalid(field, "Not base64url.")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except ValueError:
        raise _invalid(field, "Not base64url.") from None


def check_keys(*, p256dh: object, auth: object) -> None:
    point = _b64url(p256dh, "keys.p256dh")
    if len(point) != P256_POINT_BYTES or point[0] != 0x04:
        raise _invalid("keys.p256dh", "Not an uncompressed P-256 point (65 bytes).")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise _invalid("keys.p256dh", "Not a point on P-256.") from None
    if len(_b64url(auth, "keys.auth")) != AUTH_SECRET_BYTES:
        raise _invalid("keys.auth", "Must be 16 bytes.")
