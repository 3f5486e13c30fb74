from functools import partial

from django.conf import settings
from django.http import HttpRequest

from .pages import available_pages


def urls(request: HttpRequest) -> dict[str, object]:
    """Where the other processes live, and the people's pages that exist, for templates
    (every page's header, the home page)."""
    return {
        "WS_BASE_URL": settings.WS_BASE_URL,
        "FLOWER_URL": settings.FLOWER_URL,
        # Lazy: the template calls it only when it renders the list (not on admin pages).
        "SURGE_PAGES": partial(available_pages, request),
    }
