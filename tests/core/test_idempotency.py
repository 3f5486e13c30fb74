"""Idempotency-Key: same body replays, different body is refused, concurrent use is 409."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core import idempotency
from apps.core.models import IdempotencyRecord
from apps.ops.models import Ping

from ..harness import ApiClient

PINGS = "/api/ops/pings/"


@pytest.fixture
def client(django_user_model) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("ann", password="pw"))
    return client


def post(client: APIClient, body: dict, key: str | None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(PINGS, body, format="json", **headers)


@pytest.mark.django_db
def test_same_key_same_body_replays_byte_for_byte_without_a_second_effect(
    client: APIClient,
) -> None:
    first = post(client, {"message": "hi"}, "k1")
    second = post(client, {"message": "hi"}, "k1")
    assert first.status_code == second.status_code == 202
    assert first.content == second.content
    assert second["Idempotent-Replayed"] == "true"
    assert Ping.objects.count() == 1


@pytest.mark.django_db
def test_same_key_different_body_is_422(client: APIClient) -> None:
    post(client, {"message": "hi"}, "k1")
    response = post(client, {"message": "other"}, "k1")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert Ping.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_user(client: APIClient, django_user_model) -> None:
    other = APIClient()
    other.force_authenticate(django_user_model.objects.create_user("bob", password="pw"))
    post(client, {"message": "hi"}, "shared")
    assert post(other, {"message": "hi"}, "shared").status_code == 202
    assert Ping.objects.count() == 2


@pytest.mark.django_db
def test_without_a_key_every_post_acts(client: APIClient) -> None:
    post(client, {"message": "hi"}, None)
    post(client, {"message": "hi"}, None)
    assert Ping.objects.count() == 2


@pytest.mark.django_db
def test_errors_are_not_remembered(client: APIClient) -> None:
    bad = post(client, {"hold_ms": -1}, "k1")
    assert bad.status_code == 400
    assert IdempotencyRecord.objects.count() == 0
    good = post(client, {"message": "fixed"}, "k1")
    assert good.status_code == 202


@pytest.mark.django_db
def test_bad_key_is_400(client: APIClient) -> None:
    response = post(client, {}, "x" * 300)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


@pytest.mark.django_db
def test_expired_records_are_purged_and_the_key_lives_again(client: APIClient) -> None:
    post(client, {"message": "hi"}, "k1")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    # Past its lifetime the key is new again, even before the purge job ran.
    assert post(client, {"message": "changed"}, "k1").status_code == 202
    assert Ping.objects.count() == 2
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert idempotency.purge_expired() == 1
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.live
def test_concurrent_requests_with_one_key_run_once(api: ApiClient) -> None:
    """Real threads against the live server: while the first request holds the key, a
    second one gets 409 at once; afterwards the key replays the first answer."""
    user = api.register()
    headers = {"Idempotency-Key": "concurrent-1"}
    body = {"message": "slow", "hold_ms": 1500}
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = user.post(PINGS, json=body, headers=headers)

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.4)
    started = time.monotonic()
    during = user.post(PINGS, json=body, headers=headers)
    waited = time.monotonic() - started
    thread.join()
    after = user.post(PINGS, json=body, headers=headers)

    first_response = results["first"]
    assert first_response.status_code == 202  # type: ignore[attr-defined]
    assert during.status_code == 409
    assert during.json()["code"] == "idempotency_key_in_use"
    assert waited < 1.0, "the second request must not queue behind the first"
    assert after.status_code == 202
    assert after.content == first_response.content  # type: ignore[attr-defined]
    assert Ping.objects.filter(owner_id=user.user_id).count() == 1


@pytest.mark.live
def test_many_threads_one_key_one_effect(api: ApiClient) -> None:
    user = api.register()
    headers = {"Idempotency-Key": "storm"}
    statuses: list[int] = []
    lock = threading.Lock()

    def fire() -> None:
        response = user.post(PINGS, json={"message": "storm", "hold_ms": 200}, headers=headers)
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=fire) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 12
    assert set(statuses) <= {202, 409}
    assert 202 in statuses
    assert Ping.objects.filter(owner_id=user.user_id).count() == 1
