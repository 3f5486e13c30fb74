"""The unsubscribe page: GET shows a button and changes nothing (link scanners and
previews fetch GETs); POST — the button, or a mail client's RFC 8058 one-click — suppresses
the address at once. No login, and no CSRF token: the one-click POST comes from a mail
client that has none; the signed token in the URL is what authorises it."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import services

TEMPLATE = "emails/unsubscribe.html"


@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    if request.method == "POST":
        address = services.unsubscribe(token=token)
        if address is None:
            return render(request, TEMPLATE, {"invalid": True}, status=404)
        return render(request, TEMPLATE, {"address": address, "done": True})
    address = services.unsubscribe_address(token=token)
    if address is None:
        return render(request, TEMPLATE, {"invalid": True}, status=404)
    return render(request, TEMPLATE, {"address": address})


@staff_member_required
def caught(request: HttpRequest) -> HttpResponse:
    """What the development SMTP sink caught (apps/emails/devsink), newest first."""
    from .devsink import caught_list

    return render(request, "emails/caught.html", {"caught": caught_list()})
