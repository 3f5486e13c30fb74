"""Input checks whose failure must create nothing: topic slugs, Web Push endpoints and keys.

The endpoint check is what keeps the server from posting to arbitrary hosts (SSRF): only
the push services in `WEBPUSH_ALLOWED_HOSTS`, over https, except loopback hosts listed
there (development and the tests' local push service), which may use plain http.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from django.conf import settings

from apps.core.errors import ErrorCode, SurgeError

from .errors import NotificationError
from .models import TOPIC_SLUG_PATTERN
from .webpush.keys import InvalidSubscriptionKeys, subscription_keys_check

_SLUG = re.compile(TOPIC_SLUG_PATTERN)
_LOOPBACK_NAMES = {"localhost"}


def invalid(field: str, message: str) -> SurgeError:
    """The contract's 400 `invalid`, naming the field."""
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def check_topic_slug(slug: object) -> str:
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise invalid("slug", "1 to 64 characters: lower-case letters, digits and '-'.")
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
        raise invalid("endpoint", "A push service URL is required.")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise invalid("endpoint", "Not a URL.") from None
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise invalid("endpoint", "Not a push service URL.")
    allowed = list(settings.WEBPUSH_ALLOWED_HOSTS)
    if not host_allowed(host, allowed) or (parts.scheme == "http" and not _is_loopback(host)):
        raise SurgeError(
            NotificationError.ENDPOINT_NOT_ALLOWED,
            "This push service is not allowed.",
            fields={"endpoint": ["Host not in WEBPUSH_ALLOWED_HOSTS, or not https."]},
        )
    return endpoint


def check_keys(*, p256dh: object, auth: object) -> None:
    """The browser's subscription keys, checked by the one implementation the sender uses
    too (`webpush.keys.subscription_keys_check`): 400 `invalid` naming `keys.<field>`."""
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        raise invalid("keys", "p256dh and auth must be strings.")
    try:
        subscription_keys_check(p256dh=p256dh, auth=auth)
    except InvalidSubscriptionKeys as exc:
        raise invalid(f"keys.{exc.field}", exc.detail.capitalize() + ".") from None
