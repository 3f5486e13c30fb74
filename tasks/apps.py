from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    label = "tasks"
    verbose_name = "Async toolkit"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the Celery signal handlers)
