"""The lab's writes: what its counter-examples need beyond the real services.

Each is part of a counter-example to a real service, wrong or slow on purpose. The real
services live in their apps and never call these.
"""

from __future__ import annotations

import secrets

__all__ = ["coupon_code_new"]


def coupon_code_new() -> str:
    """A coupon code for the naive issue (the same shape as the real ones)."""
    return secrets.token_hex(6).upper()
