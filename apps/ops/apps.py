from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Every worker beats for /readyz (apps/ops/heartbeat.py). Added here rather than in
        # config/celery.py: a worker sets Django up (Celery's Django fixup) before it builds
        # its consumer, and importing the Celery app stays free of Django imports.
        from config.celery import app

        from .heartbeat import install

        install(app)
