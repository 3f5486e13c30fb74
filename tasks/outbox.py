"""Transactional outbox (stub: publishes on commit; the real outbox replaces the body)."""

from __future__ import annotations

from typing import Any

from django.db import transaction


def outbox_enqueue(
    task_name: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    key: str | None = None,
    queue: str | None = None,
) -> None:
    """Have `task_name` run after the caller's transaction commits (at least once)."""
    from config.celery import app

    options: dict[str, Any] = {"queue": queue} if queue else {}
    transaction.on_commit(
        lambda: app.send_task(task_name, args=args or [], kwargs=kwargs or {}, **options)
    )
