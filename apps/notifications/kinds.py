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
