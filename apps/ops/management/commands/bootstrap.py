"""`manage.py bootstrap`: the operator account and demo data, safe to run every start."""

from __future__ import annotations

import importlib
import os
from typing import Any

from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create or update the operator account and load every app's demo data (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-demo", action="store_true", help="Skip demo data.")

    def handle(self, *args: Any, **options: Any) -> None:
        self._operator()
        if not options["no_demo"]:
            self._demo()

    def _operator(self) -> None:
        default = "admin" if settings.DEBUG else None
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or default
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or default
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "admin@example.com")
        if not username or not password:
            raise ImproperlyConfigured(
                "Set DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD (no defaults "
                "outside development)."
            )
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"email": email}
        )
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        Token.objects.get_or_create(user=user)
        verb = "created" if created else "updated"
        self.stdout.write(f"operator account {verb}: {username}")

    def _demo(self) -> None:
        """Each app may ship `demo.py` with `load(stdout)`; apps grow the demo on their own."""
        for config in django_apps.get_app_configs():
            if not config.name.startswith("apps."):
                continue
            try:
                module = importlib.import_module(f"{config.name}.demo")
            except ModuleNotFoundError as exc:
                if exc.name != f"{config.name}.demo":
                    raise
                continue
            module.load(self.stdout)
