from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from .authentication import forget_token, forget_user


@receiver(post_delete, sender=Token)
def _token_deleted(sender: Any, instance: Token, **_: Any) -> None:
    forget_token(instance.key)


@receiver(post_save, sender=get_user_model())
@receiver(post_delete, sender=get_user_model())
def _user_changed(sender: Any, instance: Any, **_: Any) -> None:
    forget_user(instance.pk)
