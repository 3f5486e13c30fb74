"""A flash sale against the live stack: exact counts under concurrency and under faults."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token

from apps.core.redis import get_redis
from apps.coupons import services
from apps.coupons.models import Campaign, Coupon, CouponRequest
from config.celery import app as celery_app

from ..harness import LiveProcess, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def make_tokens(count: int) -> list[tuple[int, str]]:
    """`count` users with tokens, straight into the database (password hashing for
    thousands of HTTP registrations would dominate the test)."""
    prefix = uuid.uuid4().hex[:8]
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"fs-{prefix}-{i}", password="!") for i in range(count)
    )
    tokens = Token.objects.bulk_create(Token(user=u, key=Token.generate_key()) for u in users)
    return [(t.user_id, t.key) for t in tokens]


def fire(
    base_url: str,
    campaign_id: int,
    tokens: list[tuple[int, str]],
    threads: int = 32,
    retry_503: bool = False,
    between: callable | None = None,
) -> dict[int, int]:
    """Every user asks once, concurrently; returns user id -> final status code."""
    local = threading.local()
    url = f"{base_url}/api/coupons/campaigns/{campaign_id}/issue/"

    def one(item: tuple[int, str]) -> tuple[int, int]:
        user_id, token = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        for _ in range(50):
            response = session.post(url, headers={"Authorization": f"Token {token}"}, timeout=30)
            if not (retry_503 and response.status_code == 503):
                return user_id, response.status_code
            time.sleep(0.1)
        return user_id, response.status_code

    with ThreadPoolExecutor(threads) as pool:
        results = dict(pool.map(one, tokens))
    return results


def sweep_until_drained(campaign_id: int, expected: int) -> None:
    """What beat does every few seconds, done here until everything accepted is a coupon."""

    def drained() -> bool:
        celery_app.send_task("coupons.sweep")
        return Coupon.objects.filter(campaign_id=campaign_id).count() >= expected

    wait_for(drained, timeout=60, interval=1.0, what="accepted requests to become coupons")


def assert_exact(campaign: Campaign, statuses: dict[int, int]) -> None:
    accepted_users = {user for user, code in statuses.items() if code == 202}
    coupons = list(Coupon.objects.filter(campaign=campaign).values_list("user_id", flat=True))
    assert len(coupons) == len(set(coupons)), "no user has two coupons"
    assert set(coupons) == accepted_users, "every 202 is exactly one coupon, and nothing else is"
    assert len(coupons) <= campaign.total_quantity
    campaign.refresh_from_db()
    assert campaign.issued_count == len(coupons)
    assert CouponRequest.objects.filter(campaign=campaign, status="accepted").count() == 0


def test_2000_users_100_coupons(live_web: LiveProcess, live_worker: LiveProcess) -> None:
    campaign = services.campaign_create(name="flash", total_quantity=100, discount_percent=10)
    tokens = make_tokens(2000)
    statuses = fire(live_web.url or "", campaign.pk, tokens)
    counts = Counter(statuses.values())
    assert counts == {202: 100, 410: 1900}
    sweep_until_drained(campaign.pk, 100)
    assert_exact(campaign, statuses)
    detail = requests.get(
        f"{live_web.url}/api/coupons/campaigns/{campaign.pk}/",
        headers={"Authorization": f"Token {tokens[0][1]}"},
        timeout=10,
    ).json()
    assert (detail["issued_count"], detail["remaining"]) == (100, 0)
    assert Coupon.objects.filter(campaign=campaign).values("user_id").distinct().count() == 100


def test_the_drain_finishes_a_sale_without_beat(
    live_web: LiveProcess, live_worker: LiveProcess
) -> None:
    """No sweep here: the chain the first acceptance started persists every later one,
    the last included, and then ends (its flag is gone, so the next sale starts anew)."""
    campaign = services.campaign_create(name="chain", total_quantity=1000, discount_percent=10)
    statuses = fire(live_web.url or "", campaign.pk, make_tokens(400), threads=16)
    assert Counter(statuses.values()) == {202: 400}

    def drained() -> bool:
        return Coupon.objects.filter(campaign_id=campaign.pk).count() == 400

    wait_for(drained, timeout=30, interval=0.2, what="the chain to persist every acceptance")
    assert_exact(campaign, statuses)
    wait_for(
        lambda: not get_redis().exists(services.DRAIN.flag_key(campaign.pk)),
        timeout=30,
        interval=0.2,
        what="the drain chain to end",
    )
    # A late request after the chain ended starts a new one.
    late = make_tokens(1)
    assert fire(live_web.url or "", campaign.pk, late) == {late[0][0]: 202}
    wait_for(
        lambda: Coupon.objects.filter(campaign_id=campaign.pk).count() == 401,
        timeout=30,
        interval=0.2,
        what="the late request's coupon",
    )


def test_one_user_twenty_concurrent_requests(live_web: LiveProcess) -> None:
    campaign = services.campaign_create(name="dup", total_quantity=10, discount_percent=10)
    [(user_id, token)] = make_tokens(1)
    url = f"{live_web.url}/api/coupons/campaigns/{campaign.pk}/issue/"
    barrier = threading.Barrier(20)
    answers: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        code = requests.post(
            url, headers={"Authorization": f"Token {token}"}, timeout=30
        ).status_code
        with lock:
            answers.append(code)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(answers) == {202: 1, 409: 19}
    assert CouponRequest.objects.filter(campaign=campaign, user_id=user_id).count() == 1


def test_worker_killed_and_redis_restarted_mid_sale(
    live_web: LiveProcess, live_worker: LiveProcess, redis_restart
) -> None:
    campaign = services.campaign_create(name="faults", total_quantity=300, discount_percent=10)
    tokens = make_tokens(800)
    faults_done = threading.Event()

    def faults() -> None:
        # Strike while requests are in flight: once some are accepted and being drained.
        wait_for(
            lambda: CouponRequest.objects.filter(campaign=campaign).count() >= 120,
            timeout=60,
            interval=0.02,
            what="the sale to be under way",
        )
        connection.close()  # this thread's own connection, or the test database stays busy
        live_worker.kill()
        redis_restart()  # the gate, queued drains and kombu's bindings are gone
        live_worker.start()
        faults_done.set()

    striker = threading.Thread(target=faults)
    striker.start()
    statuses = fire(live_web.url or "", campaign.pk, tokens, threads=16, retry_503=True)
    striker.join()
    assert faults_done.is_set()

    counts = Counter(statuses.values())
    assert set(counts) <= {202, 410}, counts
    assert counts[202] == 300, "the rebuilt gate neither over-issues nor strands places"
    sweep_until_drained(campaign.pk, counts[202])
    assert_exact(campaign, statuses)
