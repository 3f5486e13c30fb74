"""A probe task that records the PostgreSQL backend serving it."""

from __future__ import annotations

import os
from typing import Any

from celery import shared_task
from django.db import connection

from tasks.base import SurgeTask

from ..models.connections import ProbeConnection

__all__ = ["probe_backend"]


@shared_task(name="toolkit.probe_backend", base=SurgeTask, bind=True)
def probe_backend(self: Any, token: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    ProbeConnection.objects.create(
        token=token,
        os_pid=os.getpid(),
        backend_pid=backend_pid,
        retries=self.request.retries or 0,
    )
