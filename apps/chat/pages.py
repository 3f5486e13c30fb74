"""`/chat/` for people: pick a room and chat live (`/chat/?room=<id>` opens one).

The page reads and writes only through the REST API and `/ws/chat/{id}/` (the same services
as every client); the view just renders the shell. Routed by config/urls.py.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET


@login_required
@require_GET
def chat(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/chat.html")


urlpatterns = [path("", chat, name="chat-page")]
