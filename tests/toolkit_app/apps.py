from django.apps import AppConfig


class ToolkitAppConfig(AppConfig):
    """Concrete models and tasks that exercise tasks/ in tests (never in production)."""

    name = "tests.toolkit_app"
    label = "toolkit_app"
