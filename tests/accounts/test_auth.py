from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.accounts import authentication

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def test_register_returns_id_username_token(client: APIClient) -> None:
    response = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "username", "token"}
    assert body["username"] == "ann"
    assert Token.objects.get(user_id=body["id"]).key == body["token"]


def test_register_twice_is_username_taken(client: APIClient) -> None:
    client.post("/api/auth/register/", {"username": "ann", "password": "pw"}, format="json")
    response = client.post(
        "/api/auth/register/", {"username": "ANN", "password": "pw"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "username_taken"


def test_strict_password_policy_in_production_mode(client: APIClient, settings) -> None:
    settings.AUTH_PASSWORD_VALIDATORS = [
        {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}
    ]
    response = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "password" in response.json()["fields"]


def test_token_for_good_and_bad_credentials(client: APIClient) -> None:
    registered = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    ).json()
    good = client.post("/api/auth/token/", {"username": "ann", "password": "pw"}, format="json")
    assert good.status_code == 200
    assert good.json() == {"token": registered["token"]}
    bad = client.post("/api/auth/token/", {"username": "ann", "password": "nope"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_credentials"


def test_missing_credentials_is_401_with_www_authenticate(client: APIClient) -> None:
    response = client.get("/api/ops/pings/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["code"] == "not_authenticated"


def test_bad_token_is_401_not_authenticated(client: APIClient) -> None:
    response = client.get("/api/ops/pings/", HTTP_AUTHORIZATION="Token nope")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_logout_revokes_at_once_in_this_process(client: APIClient) -> None:
    token = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    ).json()["token"]
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}
    assert client.get("/api/ops/pings/", **auth).status_code == 200
    assert client.post("/api/auth/logout/", **auth).status_code == 204
    assert client.get("/api/ops/pings/", **auth).status_code == 401


def test_token_lookup_is_served_from_memory(client: APIClient, django_assert_num_queries) -> None:
    token = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    ).json()["token"]
    authentication._entries.clear()
    with django_assert_num_queries(1):
        authentication.user_for_token(token)
    with django_assert_num_queries(0):
        authentication.user_for_token(token)


def test_deactivated_user_is_refused(client: APIClient, django_user_model) -> None:
    token = client.post(
        "/api/auth/register/", {"username": "ann", "password": "pw"}, format="json"
    ).json()["token"]
    user = django_user_model.objects.get(username="ann")
    user.is_active = False
    user.save()
    response = client.get("/api/ops/pings/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 401
