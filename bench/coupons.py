"""Coupons under a flash sale: accepted requests/s vs the authenticated no-op, the naive
in-request variant, and the drain rate (accepted -> persisted)."""

from __future__ import annotations

import os
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from .loadgen import LoadResult, format_table, run_load
from .stack import Stack


def _drain_every_ms() -> int:
    from django.conf import settings

    return int(settings.COUPON_DRAIN_EVERY_MS)


def _users(stack: Stack, count: int) -> list[str]:
    """`count` fresh users with tokens, bulk-inserted (each may be accepted only once)."""
    stack.django()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    prefix = uuid.uuid4().hex[:8]
    user_model = get_user_model()
    keys: list[str] = []
    for start in range(0, count, 5000):
        users = user_model.objects.bulk_create(
            user_model(username=f"cb-{prefix}-{i}", password="!")
            for i in range(start, min(count, start + 5000))
        )
        tokens = Token.objects.bulk_create(Token(user=u, key=Token.generate_key()) for u in users)
        keys.extend(t.key for t in tokens)
    return keys


def _headers(keys: list[str]) -> list[dict[str, str]]:
    return [{"Authorization": f"Token {k}", "Content-Type": "application/json"} for k in keys]


def _campaign(total: int) -> int:
    from apps.coupons import services

    return services.campaign_create(
        name=f"bench {uuid.uuid4().hex[:6]}", total_quantity=total, discount_percent=10
    ).pk


def _pending(campaign_id: int) -> int:
    from apps.coupons.models import CouponRequest

    return CouponRequest.objects.filter(campaign_id=campaign_id, status="accepted").count()


def _wait_drained(campaign_id: int, timeout: float = 300) -> float:
    from django.db import connection

    started = time.perf_counter()
    while _pending(campaign_id) and time.perf_counter() - started < timeout:
        time.sleep(0.05)
    connection.close()
    return time.perf_counter() - started


# A Redis database of its own: every bench stack shares one Redis server, and the Celery
# workers of another stack left running on database 0 would otherwise take this stack's
# drain messages (and the drain figures would be theirs).
REDIS_DB = 11


def _isolated_redis_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{REDIS_DB}"))


def run(*, duration: float, concurrency: int, total: int = 100_000) -> str:
    # Every row gets its own fresh users, each asking once: every request is a user the web
    # processes have not seen, so every row pays the same token query (no row profits from
    # tokens another row left in the web processes' memory), and no issue request is a
    # repeat. Enough per row that wrk's two threads never wrap at the rates seen here.
    per_row = max(int((duration + 1) * 2500), 20_000)
    redis_url = _isolated_redis_url(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = redis_url  # this process writes gates (campaign_create)
    with Stack(worker_procs=1, worker_concurrency=2, extra_env={"REDIS_URL": redis_url}) as stack:
        keys = _users(stack, per_row * 4)
        headers = _headers(keys)
        noop_users, issue_users, naive_users, gate_users = (
            headers[i * per_row : (i + 1) * per_row] for i in range(4)
        )

        def row(name: str, path: str, users: list[dict[str, str]], body: bytes = b"") -> LoadResult:
            # No warm-up in any row: it would spend users (each may be accepted once), and
            # every row sees only fresh users, so each pays the same token query.
            return run_load(
                name=name, url=f"{stack.web_url}{path}", method="POST", header_sets=users,
                body=body, duration_s=duration, concurrency=concurrency, warmup_s=0,
            )  # fmt: skip

        rows: list[LoadResult] = [
            row("authenticated DRF no-op POST", "/api/bench/noop-auth/", noop_users, b"{}")
        ]
        surge = _campaign(total)
        issue = row(
            f"Surge issue ({total:,} coupons)",
            f"/api/coupons/campaigns/{surge}/issue/",
            issue_users,
        )
        rows.append(issue)
        drain_tail_s = _wait_drained(surge)
        naive = _campaign(total)
        rows.append(
            row(
                f"naive issue: row lock + insert in the request ({total:,})",
                f"/api/bench/coupons/{naive}/naive-issue/",
                naive_users,
            )
        )
        # The ablation: the gate's decision alone, with no durable record (not a valid
        # issue path): what is left of the gap to the no-op is the Redis script's.
        gate_only = _campaign(total)
        rows.append(
            row(
                f"ablation: gate only, no durable record ({total:,})",
                f"/api/bench/coupons/{gate_only}/gate-only-issue/",
                gate_users,
            )
        )

        # Drain on its own: a backlog of accepted requests, then time until all are coupons.
        backlog = min(total, 100_000)
        drain_campaign = _campaign(backlog)
        drain_rate, drain_s, backlog = _drain_backlog(stack, drain_campaign, backlog)

        noop = rows[0].rps
        accepted_202 = issue.status_counts.get(202, 0)
        accepted_rps = accepted_202 / issue.duration_s if issue.duration_s else 0.0
        lines = [
            f"c={concurrency}, {duration:.0f} s per row, gunicorn x{stack.web_workers}, "
            f"{per_row:,} fresh users per row, worker 1 x 2 (nice {stack.worker_nice}), "
            f"COUPON_DRAIN_EVERY_MS={_drain_every_ms()}",
            "",
            format_table(
                rows,
                extra_cols={
                    "vs no-op": [f"{r.rps / noop:.0%}" for r in rows],
                    "answers": [
                        " ".join(f"{k}:{v}" for k, v in sorted(r.status_counts.items()))
                        for r in rows
                    ],
                },
            ),
            "",
            "| measure | value |",
            "|---|---|",
            f"| Surge accepted (202) requests/s | {accepted_rps:,.0f} "
            f"({accepted_rps / noop:.0%} of no-op) |",
            f"| Surge vs naive throughput | {issue.rps / rows[2].rps:.1f}x |",
            f"| last 202 -> last coupon row | {drain_tail_s * 1000:,.0f} ms |",
            f"| drain of a {backlog:,} backlog | {drain_rate:,.0f} coupons/s ({drain_s:.1f} s) |",
        ]
        return "\n".join(lines)


def _drain_backlog(stack: Stack, campaign_id: int, count: int) -> tuple[float, float, int]:
    """Insert `count` accepted requests directly, then time the workers turning them into
    coupons (the accept path is measured above; this isolates persisting)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from apps.coupons.models import CouponRequest
    from config.celery import app

    user_ids = list(get_user_model().objects.order_by("id").values_list("id", flat=True)[:count])
    now = timezone.now()
    for start in range(0, len(user_ids), 10_000):
        CouponRequest.objects.bulk_create(
            CouponRequest(campaign_id=campaign_id, user_id=u, accepted_at=now, status="accepted")
            for u in user_ids[start : start + 10_000]
        )
    connection.close()
    app.conf.broker_url = stack.env["REDIS_URL"]
    # Two drain chains, as two "drain now" messages would start under load.
    app.send_task("coupons.persist", args=[campaign_id])
    app.send_task("coupons.persist", args=[campaign_id])
    elapsed = _wait_drained(campaign_id)
    return len(user_ids) / elapsed, elapsed, len(user_ids)
