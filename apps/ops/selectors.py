from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from .models import Ping


def ping_list_for_user(*, user_id: int) -> QuerySet[Ping]:
    return Ping.objects.filter(owner_id=user_id)


def ping_get_for_user(*, ping_id: int, user_id: int) -> Ping:
    """Another user's ping is a 404, never a 403 that leaks its existence."""
    ping = Ping.objects.filter(pk=ping_id, owner_id=user_id).first()
    if ping is None:
        raise Http404
    return ping
