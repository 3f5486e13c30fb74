"""Demo users for `make run`: log in as `demo` / `demo`."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

DEMO_USERS = ("demo", "alice", "bob")


def load(stdout: Any) -> None:
    user_model = get_user_model()
    for username in DEMO_USERS:
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.com"}
        )
        if created:
            user.set_password(username)
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        if username == "demo":
            stdout.write(f"demo user: demo / demo, API token {token.key}")
