"""Every read of the emails app."""

from __future__ import annotations

from apps.core.errors import ErrorCode, SurgeError

from .models import Email


def email_get(*, email_id: int) -> Email:
    """One mail row (staff only reach this: see api.py), or a 404."""
    email = Email.objects.filter(pk=email_id).only("id", "status", "attempts", "last_error").first()
    if email is None:
        raise SurgeError(ErrorCode.NOT_FOUND, "Not found.", status=404)
    return email
