"""Small helpers every app's API layer uses."""

from __future__ import annotations

from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request


def caller_id(request: Request) -> int:
    """The authenticated caller's user id (views behind IsAuthenticated only)."""
    user_id = request.user.pk if request.user.is_authenticated else None
    if user_id is None:
        raise NotAuthenticated()
    return int(user_id)
