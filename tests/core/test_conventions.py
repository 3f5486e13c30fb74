"""Pagination, throttling, the schema and the pages."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from apps.ops.models import Ping

pytestmark = pytest.mark.django_db


def test_lists_are_results_and_next(django_user_model) -> None:
    user = django_user_model.objects.create_user("ann", password="pw")
    Ping.objects.bulk_create(Ping(owner=user, message=str(i)) for i in range(60))
    client = APIClient()
    client.force_authenticate(user)
    page = client.get("/api/ops/pings/").json()
    assert set(page) == {"results", "next"}
    assert len(page["results"]) == 50
    rest = client.get(page["next"]).json()
    assert len(rest["results"]) == 10
    assert rest["next"] is None
    seen = [p["message"] for p in page["results"] + rest["results"]]
    assert seen == [str(i) for i in reversed(range(60))]


def test_other_users_objects_are_404(django_user_model) -> None:
    owner = django_user_model.objects.create_user("ann", password="pw")
    ping = Ping.objects.create(owner=owner)
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("bob", password="pw"))
    response = client.get(f"/api/ops/pings/{ping.pk}/")
    assert response.status_code == 404
    assert client.get("/api/ops/pings/").json()["results"] == []


def test_throttled_answers_429_with_retry_after(monkeypatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "3/min"})
    client = APIClient()
    statuses = [
        client.post("/api/auth/token/", {"username": "x", "password": "y"}, format="json")
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [400, 400, 400, 429]
    assert statuses[-1].json()["code"] == "throttled"
    assert int(statuses[-1]["Retry-After"]) > 0


def test_schema_describes_endpoints_and_error_codes() -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    for path in ("/api/auth/register/", "/api/auth/token/", "/api/ops/pings/"):
        assert path in schema["paths"]
    register = schema["paths"]["/api/auth/register/"]["post"]["responses"]
    assert "username_taken" in register["400"]["description"]
    assert "/api/bench/noop/" not in schema["paths"]


def test_docs_home_and_admin_pages(client) -> None:
    assert client.get("/api/docs/").status_code == 200
    home = client.get("/")
    assert home.status_code == 200
    for link in (b"/api/docs/", b"/admin/", b"/readyz"):
        assert link in home.content
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
