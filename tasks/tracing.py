"""Tracing (stub API: `record` is called by every toolkit part; recording lands later)."""

from __future__ import annotations

from typing import Any


def record(
    kind: str,
    name: str = "",
    *,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Note one event of the flow that `request_id` (default: the current one) started."""
