from django.conf import settings
from django.http import HttpRequest


def urls(request: HttpRequest) -> dict[str, str]:
    """Where the other processes live, for templates (the home page, demo pages)."""
    return {
        "WS_BASE_URL": settings.WS_BASE_URL,
        "FLOWER_URL": settings.FLOWER_URL,
    }
