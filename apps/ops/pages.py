"""The home page, and the list of people's pages that the header and the home page link.

A page appears in the list once its path (fixed by the contract, ../shared/API.md "Pages")
is routed, so an app that adds its page shows up in every header without touching this
file or the templates.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve


@dataclass(frozen=True)
class Page:
    path: str
    title: str
    description: str
    staff_only: bool = False


PAGES = (
    Page("/chat/", "Chat", "pick a room and chat live"),
    Page("/notifications/", "Notifications", "your inbox, live, and Web Push"),
    Page("/coupons/", "Coupons", "a campaign's live remaining count and an issue button"),
    Page("/orders/", "Orders", "place an order and watch its saga steps arrive"),
    Page("/wallets/", "Wallets", "transactions in seq order"),
    Page(
        "/admin/dashboard/",
        "Dashboard",
        "queues, workers, backlogs, campaigns",
        staff_only=True,
    ),
)


def _routed(path: str) -> bool:
    try:
        match = resolve(path)
    except Resolver404:
        return False
    # The admin answers every unknown path under /admin/ with its catch-all view (a
    # redirect to its login or a 404); that is not a page.
    return match.func.__name__ != "catch_all_view"


def available_pages(request: HttpRequest) -> list[Page]:
    """The pages that exist in this deployment and that this user may open."""
    user = getattr(request, "user", None)
    is_staff = bool(user is not None and user.is_authenticated and user.is_staff)
    return [page for page in PAGES if (is_staff or not page.staff_only) and _routed(page.path)]


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")
