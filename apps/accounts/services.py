"""Account writes: registration and tokens."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from apps.core.errors import ErrorCode, SurgeError
from apps.emails.services import email_welcome

from .errors import AccountError

User = get_user_model()


@dataclass(frozen=True)
class Registered:
    user_id: int
    username: str
    token: str


def user_register(*, username: str, password: str, email: str = "") -> Registered:
    """Creates a user and its API token together; a username is never registered twice."""
    candidate = User(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise SurgeError(
            ErrorCode.INVALID, "Invalid input.", fields={"password": list(exc.messages)}
        ) from None
    if User.objects.filter(username__iexact=username).exists():
        raise _username_taken()
    try:
        with transaction.atomic():
            user = User.objects.create_user(username=username, email=email, password=password)
            token = Token.objects.create(user=user)
            email_welcome(user_id=user.pk)
    except IntegrityError:  # lost a race with another registration of the same name
        raise _username_taken() from None
    return Registered(user_id=user.pk, username=user.username, token=token.key)


def _username_taken() -> SurgeError:
    return SurgeError(
        AccountError.USERNAME_TAKEN,
        "That username is taken.",
        fields={"username": ["That username is taken."]},
    )


def token_obtain(*, username: str, password: str) -> str:
    user = authenticate(username=username, password=password)
    if user is None or not user.is_active:
        raise SurgeError(AccountError.INVALID_CREDENTIALS, "Wrong username or password.")
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


def token_revoke(*, user_id: int) -> None:
    """Logout: the token stops working here now, in other web processes within seconds."""
    for token in Token.objects.filter(user_id=user_id):
        token.delete()
