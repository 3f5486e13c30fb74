from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    label = "tasks"
    verbose_name = "Async toolkit"

    def ready(self) -> None:
        # Signal handlers, the hooks of tasks.failures (the dead letters' recorder, the
        # outbox's done listener: without them a failed task could not be recorded), and
        # the modules that define the toolkit's own Celery tasks (the `tasks` app has no
        # `tasks.py` for autodiscovery to find).
        from . import base, deadletters, outbox, saga, signals, tracing  # noqa: F401
