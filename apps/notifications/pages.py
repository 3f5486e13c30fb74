"""`/notifications/` for people: the inbox live, and Web Push for this browser.

The page reads and writes only through the REST API and `/ws/notifications/` (the same
services as every client); the view just renders the shell. Routed by config/urls.py.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "notifications/inbox.html")


@require_GET
def service_worker(request: HttpRequest) -> HttpResponse:
    # Served here, not from /static/: a service worker controls only the paths under the
    # one its script came from, and it must control this page to be registered for it.
    response = render(request, "notifications/sw.js", content_type="text/javascript")
    # Browsers check for a new worker on each registration; let them see a changed one.
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [
    path("", inbox, name="notifications-page"),
    path("sw.js", service_worker, name="notifications-sw"),
]
