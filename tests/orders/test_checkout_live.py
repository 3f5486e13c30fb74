"""The checkout saga on the live stack: a storm of orders with every payment behaviour,
a worker killed mid-storm, a compensation that fails until an operator retries it, and
coupons raced by many orders. Invariants are checked exactly after the queue drains."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token

from apps.coupons import services as coupon_services
from apps.coupons.models import Coupon
from apps.orders.models import Order, OrderItem, Product
from config.celery import app as celery_app

from ..harness import LiveProcess, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

TERMINAL = {"confirmed", "failed", "cancelled", "compensation_failed"}
MIX = (
    ["tok_ok"] * 70
    + ["tok_decline"] * 10
    + ["tok_flaky"] * 10
    + ["tok_capture_fails"] * 5
    + ["tok_timeout"] * 5
)


def make_users(count: int) -> list[tuple[int, str]]:
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"buyer-{time.time_ns()}-{i}", password="!") for i in range(count)
    )
    tokens = Token.objects.bulk_create(Token(user=u, key=Token.generate_key()) for u in users)
    return [(t.user_id, t.key) for t in tokens]


def post_all(
    base_url: str, orders: list[tuple[str, dict]], threads: int = 16
) -> list[requests.Response]:
    local = threading.local()
    barrier = threading.Barrier(min(threads, len(orders)))

    def place(item: tuple[str, dict]) -> requests.Response:
        token, body = item
        session = getattr(local, "s", None)
        if session is None:
            session = local.s = requests.Session()
            barrier.wait()  # every thread starts together: a real race
        return session.post(
            f"{base_url}/api/orders/",
            json=body,
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        )

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(place, orders))


def place_all(base_url: str, orders: list[tuple[str, dict]], threads: int = 16) -> list[int]:
    responses = post_all(base_url, orders, threads)
    for response in responses:
        assert response.status_code == 202, response.text
    return [int(r.json()["id"]) for r in responses]


def drain(order_ids: list[int], timeout: float = 150, outbox_sweep: bool = False) -> None:
    """Wait until every order is terminal, doing beat's saga sweep (and with `outbox_sweep`
    its outbox sweep) meanwhile."""

    def done() -> bool:
        celery_app.send_task("tasks.saga_wake")
        if outbox_sweep:
            celery_app.send_task("tasks.outbox_sweep", queue="high")
        pending = Order.objects.filter(pk__in=order_ids).exclude(status__in=TERMINAL).count()
        return pending == 0

    wait_for(done, timeout=timeout, interval=1.0, what="every order to reach a terminal state")


def gateway_stats(gateway_url: str) -> dict:
    return requests.get(f"{gateway_url}/v1/stats", timeout=5).json()


def storm_bodies(products: list[Product], count: int, seed: int) -> list[tuple[str, dict]]:
    """(user token, order body) for `count` orders of 1-2 products with the MIX of tokens."""
    rng = random.Random(seed)
    users = make_users(20)
    bodies = []
    for _ in range(count):
        chosen = rng.sample(products, rng.randint(1, 2))
        body = {
            "items": [{"product_id": p.pk, "quantity": rng.randint(1, 3)} for p in chosen],
            "payment_token": rng.choice(MIX),
        }
        bodies.append((rng.choice(users)[1], body))
    return bodies


def storm(
    base_url: str, products: list[Product], count: int, seed: int
) -> tuple[list[int], dict[int, str]]:
    bodies = storm_bodies(products, count, seed)
    ids = place_all(base_url, bodies)
    return ids, {
        order_id: body["payment_token"] for order_id, (_, body) in zip(ids, bodies, strict=True)
    }


def assert_invariants(
    gateway_url: str,
    products: list[Product],
    initial: dict[int, int],
    ids: list[int],
    tokens: dict[int, str],
) -> None:
    orders = {o.pk: o for o in Order.objects.filter(pk__in=ids)}
    assert {o.status for o in orders.values()} <= TERMINAL
    confirmed_units: Counter[int] = Counter()
    for item in OrderItem.objects.filter(order__status="confirmed", order_id__in=ids):
        confirmed_units[item.product_id] += item.quantity
    for product in Product.objects.filter(pk__in=[p.pk for p in products]):
        assert product.stock_reserved == 0, product
        assert product.stock_on_hand == initial[product.pk] - confirmed_units[product.pk], product
        assert product.stock_on_hand >= 0
    stats = gateway_stats(gateway_url)
    confirmed_total = sum(
        (o.total for o in orders.values() if o.status == "confirmed"), Decimal("0")
    )
    assert Decimal(str(stats["captured"]["amount"])) == confirmed_total
    for reference, counts in stats["by_reference"].items():
        assert counts["captured"] <= 1, reference
    expected = {
        "tok_decline": "payment_declined",
        "tok_timeout": "payment_timeout",
        "tok_capture_fails": "capture_failed",
    }
    for order_id, order in orders.items():
        token = tokens[order_id]
        if order.status == "confirmed":
            assert token in ("tok_ok", "tok_flaky")
            assert stats["by_reference"][f"order:{order_id}"]["captured"] == 1
        else:
            assert order.status == "failed", (order_id, order.status, token)
            assert order.failure_reason in {expected.get(token), "out_of_stock"}, (
                order_id,
                token,
                order.failure_reason,
            )
            assert stats["by_reference"].get(f"order:{order_id}", {}).get("captured", 0) == 0


def make_products(stock: list[int]) -> tuple[list[Product], dict[int, int]]:
    products = [
        Product.objects.create(name=f"p{i}", price=Decimal(f"{i + 3}.25"), stock_on_hand=s)
        for i, s in enumerate(stock)
    ]
    return products, {p.pk: p.stock_on_hand for p in products}


def test_storm_of_300_orders(
    live_web: LiveProcess, live_worker: LiveProcess, live_gateway: str
) -> None:
    products, initial = make_products([60, 60, 40, 30, 20])  # less than asked: some run out
    ids, tokens = storm(live_web.url or "", products, 300, seed=5)
    drain(ids)
    assert_invariants(live_gateway, products, initial, ids, tokens)
    reasons = Counter(Order.objects.filter(pk__in=ids).values_list("failure_reason", flat=True))
    assert reasons["out_of_stock"] > 0, "the storm must exhaust some stock"
    flaky_confirmed = [
        i for i in ids if tokens[i] == "tok_flaky" and Order.objects.get(pk=i).status == "confirmed"
    ]
    assert flaky_confirmed
    user_token = Token.objects.get(user_id=Order.objects.get(pk=flaky_confirmed[0]).user_id).key
    detail = requests.get(
        f"{live_web.url}/api/orders/{flaky_confirmed[0]}/",
        headers={"Authorization": f"Token {user_token}"},
        timeout=10,
    ).json()
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["authorize_payment"]["attempts"] >= 2
    assert steps["capture_payment"]["attempts"] >= 2
    assert detail["status"] == "confirmed"


def strike_when_busy(strike: Callable[[], None]) -> threading.Thread:
    """A started thread that waits until some order is mid-saga (stock reserved or paid),
    then runs `strike` (a kill, a restart): the fault lands while work is in flight."""

    def run() -> None:
        wait_for(
            lambda: Order.objects.filter(status__in=("reserved", "paid")).exists(),
            timeout=60,
            interval=0.05,
        )
        connection.close()  # this thread's own, or the test database stays busy
        strike()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_worker_killed_mid_storm(
    live_web: LiveProcess, live_worker: LiveProcess, live_gateway: str
) -> None:
    products, initial = make_products([40, 40, 40])

    def kill() -> None:
        live_worker.kill()
        time.sleep(0.5)
        live_worker.start()

    killer = strike_when_busy(kill)
    ids, tokens = storm(live_web.url or "", products, 120, seed=11)
    killer.join()
    drain(ids, timeout=200)
    assert_invariants(live_gateway, products, initial, ids, tokens)


def test_storm_on_the_saga_threads_pool_with_a_kill(
    live_web: LiveProcess,
    live_worker: LiveProcess,
    live_gateway: str,
    worker_pool: Callable[..., list[LiveProcess]],
) -> None:
    """The workers as the Procfile runs them: saga turns only on a threads pool (queue
    `saga`, many threads and database connections in one process), the rest on a prefork
    worker. The threads worker is SIGKILLed mid-storm and started again: same invariants."""
    live_worker.stop()  # the session's worker serves every queue: out of the way
    worker_pool(1, queues="high,default,bulk")
    (saga_worker,) = worker_pool(1, queues="saga", pool="threads", concurrency=8)
    assert "(thread)" in saga_worker.log_text()
    products, initial = make_products([40, 40, 40])
    before_kill: list[str] = []

    def kill() -> None:
        saga_worker.kill()
        before_kill.append(saga_worker.log_text())
        time.sleep(0.5)
        saga_worker.start()

    killer = strike_when_busy(kill)
    ids, tokens = storm(live_web.url or "", products, 120, seed=13)
    killer.join()
    drain(ids, timeout=200)
    assert_invariants(live_gateway, products, initial, ids, tokens)
    # Turns ran on the threads pool before the kill and after it (the restart logs anew).
    assert "tasks.saga_advance" in before_kill[0]
    assert "tasks.saga_advance" in saga_worker.log_text()


def test_redis_restarted_mid_storm(
    live_web: LiveProcess, live_worker: LiveProcess, live_gateway: str, redis_restart
) -> None:
    """Redis loses everything while orders are accepted and sagas run: queued advance
    messages, unacked ones, the web's and the worker's connections. Every accepted order
    still ends in a terminal state once, nothing is captured twice, stock adds up; the
    outbox's sweep (beat's job, done here) republishes what the lost Redis held."""
    products, initial = make_products([40, 40, 40])
    restarted = threading.Event()

    def restart() -> None:
        redis_restart()
        restarted.set()

    striker = strike_when_busy(restart)
    bodies = storm_bodies(products, 120, seed=17)
    responses = post_all(live_web.url or "", bodies)
    striker.join()
    assert restarted.is_set()
    # Accepting an order needs PostgreSQL only: none was refused while Redis was away.
    assert [r.status_code for r in responses] == [202] * len(bodies), Counter(
        r.status_code for r in responses
    )
    ids = [int(r.json()["id"]) for r in responses]
    tokens = {
        order_id: body["payment_token"] for order_id, (_, body) in zip(ids, bodies, strict=True)
    }
    drain(ids, timeout=200, outbox_sweep=True)
    assert_invariants(live_gateway, products, initial, ids, tokens)


def test_failing_void_parks_the_order_until_an_operator_retries(
    live_web: LiveProcess, live_worker: LiveProcess, live_gateway: str, admin_client
) -> None:
    products, initial = make_products([5])
    [(_, token)] = make_users(1)
    [order_id] = place_all(
        live_web.url or "",
        [
            (
                token,
                {
                    "items": [{"product_id": products[0].pk, "quantity": 2}],
                    "payment_token": "tok_void_fails",
                },
            )
        ],
    )
    wait_for(
        lambda: Order.objects.get(pk=order_id).status == "compensation_failed",
        timeout=60,
        what="the order to park in compensation_failed",
    )
    order = Order.objects.get(pk=order_id)
    assert order.failure_reason == "capture_failed"
    assert Product.objects.get(pk=products[0].pk).stock_reserved == 2  # not released: void first

    requests.post(f"{live_gateway}/v1/control/recover", timeout=5)
    response = admin_client.post(
        "/admin/orders/order/", {"action": "retry_compensation", "_selected_action": [order_id]}
    )
    assert response.status_code == 302
    wait_for(
        lambda: Order.objects.get(pk=order_id).status == "failed",
        timeout=60,
        what="the retried compensation",
    )
    product = Product.objects.get(pk=products[0].pk)
    assert (product.stock_on_hand, product.stock_reserved) == (initial[product.pk], 0)
    stats = gateway_stats(live_gateway)["by_reference"][f"order:{order_id}"]
    assert (stats["captured"], stats["voided"]) == (0, 1)


def test_coupon_raced_by_twenty_orders_and_given_back(
    live_web: LiveProcess, live_worker: LiveProcess, live_gateway: str
) -> None:
    products, _ = make_products([100])
    [(user_id, token)] = make_users(1)
    campaign = coupon_services.campaign_create(name="c", total_quantity=5, discount_percent=50)
    coupon_services.coupon_request_accept(campaign_id=campaign.pk, user_id=user_id)
    coupon_services.coupons_persist_batch(campaign_id=campaign.pk)
    coupon = Coupon.objects.get(user_id=user_id)
    line = [{"product_id": products[0].pk, "quantity": 1}]

    # A failing order takes the coupon, then gives it back.
    [declined] = place_all(
        live_web.url or "",
        [(token, {"items": line, "coupon_id": coupon.pk, "payment_token": "tok_decline"})],
    )
    wait_for(lambda: Order.objects.get(pk=declined).status == "failed", timeout=60)
    coupon.refresh_from_db()
    assert coupon.used_at is None and coupon.used_by == ""

    # Twenty orders race for it: at most one uses it. Orders placed after it was taken are
    # refused at once (400); the ones accepted before race in their sagas.
    answers = post_all(
        live_web.url or "", [(token, {"items": line, "coupon_id": coupon.pk})] * 20, threads=20
    )
    assert {r.status_code for r in answers} <= {202, 400}
    racers = [int(r.json()["id"]) for r in answers if r.status_code == 202]
    assert racers
    drain(racers)
    statuses = Counter(Order.objects.filter(pk__in=racers).values_list("status", "failure_reason"))
    assert statuses[("confirmed", "")] == 1
    assert statuses[("failed", "coupon_unavailable")] == len(racers) - 1
    coupon.refresh_from_db()
    winner = Order.objects.get(pk__in=racers, status="confirmed")
    assert coupon.used_by == f"order:{winner.pk}" and coupon.used_at is not None
    assert winner.total == Decimal("1.63")  # 3.25 at 50%, rounded half up
