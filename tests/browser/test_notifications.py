"""/notifications/ in Chromium: the inbox live (and after a reconnect), read marks, and the
Web Push subscribe flow through the page's service worker."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from playwright.sync_api import Page, expect

from apps.notifications import kinds, services
from apps.notifications.models import WebPushSubscription
from apps.notifications.webpush.keys import vapid_keys_generate
from tests.conftest import LOG_DIR
from tests.harness import ApiClient, LiveProcess, free_port, gunicorn_argv, http_ready
from tests.notifications.webpush.push_service import PushService

from .conftest import PageGuard

VAPID = vapid_keys_generate()
# Long enough for the fan-out on a loaded 2-core machine (outbox, worker, channel layer).
ARRIVES_MS = 30_000


@pytest.fixture(scope="module")
def _push_web(live_env: dict[str, str], live_ws: LiveProcess) -> Iterator[LiveProcess]:
    # The pages' web process, plus what Web Push needs: a VAPID pair, and the test push
    # service's loopback host allowed as an endpoint (the default allows public ones only).
    port = free_port()
    process = LiveProcess(
        "pages-web-push",
        gunicorn_argv(port, workers=1),
        env=live_env
        | {
            "WS_BASE_URL": live_ws.url or "",
            "WEBPUSH_ALLOWED_HOSTS": "127.0.0.1",
            "VAPID_PUBLIC_KEY": VAPID.public_key,
            "VAPID_PRIVATE_KEY": VAPID.private_key,
        },
        log_dir=LOG_DIR,
        url=f"http://127.0.0.1:{port}",
        ready=lambda p: http_ready(f"{p.url}/healthz"),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def site(_push_web: LiveProcess, live_ws: LiveProcess, transactional_db: None) -> str:
    """This module's site (see `_push_web`); `page` and `user` use it."""
    for process in (_push_web, live_ws):
        if not process.alive():
            process.start()
    return _push_web.url or ""


def _open_logged_in(page: Page, user: ApiClient) -> None:
    """Opens the page, which sends a stranger to the login first and back after it."""
    page.goto("/notifications/")
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/notifications/$"))
    page.get_by_label("Username").fill(user.username or "")
    page.get_by_label("Password").fill("pw-12345")
    page.get_by_label("Password").press("Enter")
    page.wait_for_url("**/notifications/")
    expect(page.locator("#surge-status")).to_have_text("Live: connected.")


def _notify(user_id: int | None, title: str) -> bool:
    # Run in another thread: Playwright's loop in the test's thread makes async_to_sync
    # refuse. Its connection is closed here, or the test database could not be dropped.
    try:
        made = services.notify_user(
            user_id=user_id or 0,
            kind=kinds.ORDER_CONFIRMED,
            title=title,
            body="",
            source_key=f"browser-test:{uuid.uuid4().hex}",
        )
        return made is not None
    finally:
        connection.close()


def test_a_broadcast_shows_live_and_the_unread_count_follows_read_marks(
    page: Page, site: str, user: ApiClient, live_worker: LiveProcess
) -> None:
    topic = f"news-{uuid.uuid4().hex[:8]}"
    assert user.post(f"/api/notifications/topics/{topic}/subscribe/").status_code == 200
    staff = ApiClient(site).register()
    get_user_model().objects.filter(pk=staff.user_id).update(is_staff=True)
    _open_logged_in(page, user)
    expect(page.locator("#inbox-empty")).to_be_visible()
    page.evaluate("window.notReloaded = true")

    items = page.locator("#inbox > li")
    for count, title in enumerate(("Older news", "Newer news"), start=1):
        body = {"topic": topic, "title": title, "body": f"{title} body", "url": "/notifications/"}
        assert staff.post("/api/notifications/broadcasts/", body).status_code == 202
        expect(items).to_have_count(count, timeout=ARRIVES_MS)
        expect(page.locator("#unread-count")).to_have_text(str(count))
    expect(items.first).to_contain_text("Newer news")  # newest first
    expect(items.nth(1)).to_contain_text("Older news body")

    page.get_by_role("button", name="Mark read: Older news").press("Enter")
    expect(page.locator("#unread-count")).to_have_text("1")
    expect(page.get_by_role("button", name="Mark read: Older news")).to_be_hidden()
    assert user.get("/api/notifications/?unread=true").json()["unread_count"] == 1
    page.get_by_role("button", name="Mark all read").click()
    expect(page.locator("#unread-count")).to_have_text("0")
    expect(page.locator("#inbox > li.unread")).to_have_count(0)
    assert user.get("/api/notifications/?unread=true").json()["unread_count"] == 0
    assert page.evaluate("window.notReloaded") is True


def test_what_arrives_while_the_socket_is_down_shows_after_the_reconnect(
    page: Page, user: ApiClient, live_ws: LiveProcess, page_guard: PageGuard
) -> None:
    _open_logged_in(page, user)
    page_guard.expect_console(r"^WebSocket connection to .* failed")
    live_ws.stop()
    try:
        expect(page.locator("#surge-status")).to_contain_text("retrying in")
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(_notify, user.user_id, "Missed while offline").result()
    finally:
        live_ws.start()  # the later tests of the session share this process
    expect(page.locator("#surge-status")).to_have_text("Live: connected.", timeout=20_000)
    expect(page.locator("#inbox > li")).to_have_count(1)
    expect(page.locator("#inbox > li").first).to_contain_text("Missed while offline")
    expect(page.locator("#unread-count")).to_have_text("1")


# A headless browser reaches no real push service: the page's PushManager hands out the test
# push service's subscription instead, and notes what the page asked for.
STUB_PUSH_MANAGER = """
(() => {
  const made = %s;
  let current = null;
  const b64url = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const subscription = {
    endpoint: made.endpoint,
    expirationTime: null,
    toJSON: () => ({ endpoint: made.endpoint, expirationTime: null, keys: made.keys }),
    unsubscribe: async () => { current = null; return true; },
  };
  PushManager.prototype.subscribe = async function (options) {
    window.askedFor = { userVisibleOnly: options.userVisibleOnly,
                        key: b64url(options.applicationServerKey) };
    current = subscription;
    return subscription;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
})();
"""


def test_subscribe_registers_this_browser_and_unsubscribe_removes_it(
    page: Page, site: str, user: ApiClient
) -> None:
    with PushService() as push_service:
        made = push_service.subscribe(application_server_key=VAPID.public_key)
    page.add_init_script(STUB_PUSH_MANAGER % json.dumps(made.as_json()))
    _open_logged_in(page, user)
    state = page.get_by_test_id("push-state")
    expect(state).to_have_text("This browser does not receive Web Push.")
    # The service worker came from /notifications/, so it controls the page.
    scope = page.evaluate("navigator.serviceWorker.ready.then((r) => r.scope)")
    assert scope == f"{site}/notifications/"

    page.get_by_role("button", name="Subscribe this browser").press("Enter")
    expect(state).to_have_text(re.compile("receives your notifications"))
    assert page.evaluate("window.askedFor") == {"userVisibleOnly": True, "key": VAPID.public_key}
    row = WebPushSubscription.objects.get(endpoint=made.endpoint)
    assert (row.user_id, row.p256dh, row.auth) == (user.user_id, made.p256dh, made.auth)

    page.get_by_role("button", name="Unsubscribe this browser").click()
    expect(state).to_have_text("This browser does not receive Web Push.")
    assert not WebPushSubscription.objects.filter(endpoint=made.endpoint).exists()
