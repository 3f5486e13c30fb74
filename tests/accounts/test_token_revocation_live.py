from __future__ import annotations

import time

import pytest
from rest_framework.authtoken.models import Token

from ..harness import ApiClient, wait_for

pytestmark = pytest.mark.live


def test_revoked_token_stops_working_everywhere_within_seconds(api: ApiClient) -> None:
    """gunicorn runs 2 worker processes, each with its own token cache (TTL 1 s here)."""
    user = api.register()
    for _ in range(6):  # warm both processes' caches
        assert user.get("/api/ops/pings/").status_code == 200
    Token.objects.filter(user_id=user.user_id).delete()  # revoked behind their backs
    revoked_at = time.monotonic()
    wait_for(
        lambda: all(user.get("/api/ops/pings/").status_code == 401 for _ in range(6)),
        timeout=5,
        what="every process to refuse the revoked token",
    )
    assert time.monotonic() - revoked_at < 3
