"""WebSocket auth: `?token=<token>` (browsers cannot set headers on a socket), else the
Django session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from .authentication import user_for_token


@database_sync_to_async
def _user(key: str) -> Any:
    try:
        return user_for_token(key)
    except AuthenticationFailed:
        return AnonymousUser()


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("token") or [""])[0]
        if token:
            scope = dict(scope, user=await _user(token))
        return await super().__call__(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 - mirrors AuthMiddlewareStack
    """Session auth underneath, a token in the query string on top (it wins)."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))
