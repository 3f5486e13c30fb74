"""Every kind of bad input gets a 4xx JSON error with a stable code, never a 500."""

from __future__ import annotations

import json

import pytest
from django.http import HttpResponse, HttpResponseServerError
from django.test import RequestFactory
from rest_framework.test import APIClient

from apps.core.exceptions import flatten_fields
from apps.core.middleware import ApiJsonErrorsMiddleware
from apps.core.parsers import json_depth_exceeds

pytestmark = pytest.mark.django_db

REGISTER = "/api/auth/register/"


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def post_raw(
    client: APIClient, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict]:
    response = client.generic("POST", REGISTER, body, content_type=content_type)
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return response.status_code, json.loads(response.content)


def test_malformed_json(client: APIClient) -> None:
    status, body = post_raw(client, b'{"username": ')
    assert (status, body["code"]) == (400, "parse_error")


def test_wrong_content_type(client: APIClient) -> None:
    status, body = post_raw(client, b"username=a", content_type="application/x-www-form-urlencoded")
    assert (status, body["code"]) == (415, "unsupported_media_type")


def test_oversize_body(client: APIClient, settings) -> None:
    settings.API_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    status, body = post_raw(client, b'{"username": "' + b"a" * 5000 + b'"}')
    assert (status, body["code"]) == (413, "request_too_large")


def test_non_utf8_body(client: APIClient) -> None:
    status, body = post_raw(client, b'{"username": "\xff\xfe"}')
    assert (status, body["code"]) == (400, "parse_error")


def test_huge_integer(client: APIClient) -> None:
    status, body = post_raw(client, b'{"username": ' + b"9" * 5000 + b"}")
    assert (status, body["code"]) == (400, "parse_error")


def test_integer_past_bigint_is_a_validation_error(client: APIClient, django_user_model) -> None:
    user = django_user_model.objects.create_user("big", password="pw")
    client.force_authenticate(user)
    response = client.get(f"/api/ops/pings/{10**30}/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_deep_nesting(client: APIClient) -> None:
    status, body = post_raw(client, b"[" * 100_000 + b"]" * 100_000)
    assert (status, body["code"]) == (400, "parse_error")
    status, body = post_raw(client, b'{"a": ' * 40 + b"1" + b"}" * 40)
    assert (status, body["code"]) == (400, "parse_error")


def test_nan_is_not_json(client: APIClient) -> None:
    status, body = post_raw(client, b'{"username": NaN}')
    assert (status, body["code"]) == (400, "parse_error")


def test_validation_error_shape(client: APIClient) -> None:
    response = client.post(REGISTER, {"username": "bad name!"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert set(body["fields"]) == {"username", "password"}
    assert all(isinstance(m, str) for m in body["fields"]["username"])


def test_unknown_api_route_is_json_404(client: APIClient) -> None:
    response = client.get("/api/does-not-exist/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "Not found."}


def test_missing_trailing_slash_is_json_404_not_a_redirect(client: APIClient) -> None:
    response = client.post("/api/auth/register", {}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_wrong_method_is_json_405(client: APIClient) -> None:
    response = client.delete("/api/auth/token/")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_html_500_under_api_becomes_json() -> None:
    middleware = ApiJsonErrorsMiddleware(lambda request: HttpResponseServerError("<h1>boom</h1>"))
    response = middleware(RequestFactory().get("/api/anything/"))
    assert response.status_code == 500
    assert json.loads(response.content) == {
        "code": "server_error",
        "detail": "Internal server error.",
    }


def test_pages_outside_api_are_left_alone() -> None:
    page = HttpResponse("<h1>not found</h1>", status=404)
    middleware = ApiJsonErrorsMiddleware(lambda request: page)
    assert middleware(RequestFactory().get("/admin/nope/")) is page


def test_flatten_nested_fields() -> None:
    detail = {"items": [{}, {"quantity": ["Too big."]}], "coupon": ["Unknown."]}
    assert flatten_fields(detail) == {"items.1.quantity": ["Too big."], "coupon": ["Unknown."]}
    assert flatten_fields(["Bad."]) == {"non_field_errors": ["Bad."]}


def test_depth_check() -> None:
    assert not json_depth_exceeds({"a": [1, {"b": 2}]}, 3)
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
