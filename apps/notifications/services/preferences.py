"""Per-user channels per kind (in-app, web push, email); critical kinds ignore them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from .. import kinds as kinds_mod
from ..models import NotificationPreference
from ..validation import invalid

__all__ = ["preferences_set"]


def preferences_set(*, user_id: int, changes: Any) -> None:
    """Sets the user's channels per kind: `{kind: {in_app?, web_push?, email?}}`; a channel
    left out keeps its value. Unknown kinds, channels or non-booleans are 400 `invalid`
    and change nothing."""
    if not isinstance(changes, Mapping):
        raise invalid("non_field_errors", "Expected an object of kinds.")
    for kind, channels in changes.items():
        if kind not in kinds_mod.KINDS:
            raise invalid(str(kind), "Unknown kind.")
        if not isinstance(channels, Mapping):
            raise invalid(str(kind), "Expected an object of channels.")
        for channel, value in channels.items():
            if channel not in kinds_mod.CHANNELS:
                raise invalid(f"{kind}.{channel}", "Unknown channel.")
            if not isinstance(value, bool):
                raise invalid(f"{kind}.{channel}", "Must be a boolean.")
    if not changes:
        return
    with transaction.atomic():
        current = {
            pref.kind: pref
            for pref in NotificationPreference.objects.select_for_update().filter(
                user_id=user_id, kind__in=list(changes)
            )
        }
        rows = []
        for kind, channels in changes.items():
            pref = current.get(kind) or NotificationPreference(user_id=user_id, kind=kind)
            for channel, value in channels.items():
                setattr(pref, channel, value)
            rows.append(pref)
        NotificationPreference.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["user", "kind"],
            update_fields=list(kinds_mod.CHANNELS),
        )
