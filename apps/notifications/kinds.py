"""The kinds of notification, and which of them are critical.

A kind names what happened (`order.failed`); preferences are kept per kind and channel.
A *critical* kind is one a user must learn about whatever they chose (money that did not
move, an order that will not arrive): it bypasses every preference, on every channel.
"""

from __future__ import annotations

COUPON_ISSUED = "coupon.issued"
ORDER_CONFIRMED = "order.confirmed"
ORDER_FAILED = "order.failed"
WALLET_WITHDRAWAL_REJECTED = "wallet.withdrawal_rejected"
BROADCAST = "broadcast"
CHAT_MESSAGE = "chat.message"

# Every kind a preference may name (PUT of an unknown kind is 400 `invalid`).
KINDS: tuple[str, ...] = (
    COUPON_ISSUED,
    ORDER_CONFIRMED,
    ORDER_FAILED,
    WALLET_WITHDRAWAL_REJECTED,
    BROADCAST,
    CHAT_MESSAGE,
)

# Bypass preferences: the user asked for something to happen and it did not.
CRITICAL_KINDS: frozenset[str] = frozenset({ORDER_FAILED, WALLET_WITHDRAWAL_REJECTED})

CHANNELS: tuple[str, ...] = ("in_app", "web_push", "email")
# A kind the user never set: the inbox and the browser yes, mail only when asked for.
DEFAULT_CHANNELS: dict[str, bool] = {"in_app": True, "web_push": True, "email": False}


def is_critical(kind: str) -> bool:
    return kind in CRITICAL_KINDS


# Web Push per kind: RFC 8030 `Urgency` (how much battery a device may spend on it now)
# and `TTL` (how long the push service keeps it for an offline device). Critical kinds are
# high and kept a week: the user must learn of them even days later.
PUSH_URGENCY: dict[str, str] = {
    COUPON_ISSUED: "normal",
    ORDER_CONFIRMED: "normal",
    ORDER_FAILED: "high",
    WALLET_WITHDRAWAL_REJECTED: "high",
    BROADCAST: "low",
    CHAT_MESSAGE: "high",
}
PUSH_TTL_S: dict[str, int] = {
    ORDER_FAILED: 7 * 24 * 3600,
    WALLET_WITHDRAWAL_REJECTED: 7 * 24 * 3600,
    CHAT_MESSAGE: 3600,
}
DEFAULT_PUSH_TTL_S = 24 * 3600


def push_topic(kind: str, source_key: str) -> str | None:
    """The RFC 8030 `Topic` of a push, where a newer message makes an undelivered older one
    pointless: an order's status ("order:42:failed" replaces "order:42:confirmed" waiting
    for an offline phone). Other kinds are each news of their own: no topic."""
    if kind in (ORDER_CONFIRMED, ORDER_FAILED):
        parts = source_key.split(":")
        if len(parts) >= 2 and parts[0] == "order" and parts[1].isdigit():
            return f"order-{parts[1]}"
    return None
