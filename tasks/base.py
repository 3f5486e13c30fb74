"""SurgeTask (stub: the real base task with retries and dead letters replaces it)."""

from __future__ import annotations

from celery import Task


class SurgeTask(Task):
    pass
