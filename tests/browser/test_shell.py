"""What every page shares: the base template, the session login and logout, surge.js."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.harness import ApiClient, LiveProcess

from .conftest import PageGuard


def test_home_renders_on_the_base_template_with_our_own_stylesheet(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_title("Home · Surge")
    expect(page.get_by_role("link", name="Log in", exact=True).first).to_be_visible()
    # The stylesheet came from our static files (a failed load would fail the test too).
    header = page.locator(".site-header")
    expect(header).to_have_css("border-bottom-style", "solid")
    assert page.evaluate("typeof window.Surge.live") == "function"
    for href in ("/api/docs/", "/admin/", "/readyz"):
        expect(page.locator(f'main a[href="{href}"]').first).to_be_visible()


def test_login_shows_the_user_and_their_live_socket(
    page: Page, user: ApiClient, login: Callable[[Page, ApiClient], None]
) -> None:
    page.goto("/")
    login(page, user)
    expect(page.get_by_test_id("current-user")).to_have_text(user.username or "")
    # The ws process (its own port, from settings) took the session cookie.
    expect(page.locator("#ws-check")).to_have_text(f"connected as {user.username}")
    expect(page.locator("#surge-status")).to_have_text("Live: connected.")


def test_a_wrong_password_is_said_in_words(page: Page, user: ApiClient) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(user.username or "")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("enter a correct username and password")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("link", name="Log in", exact=True)).to_have_count(0)


def test_logout_goes_back_and_ends_the_session(
    page: Page, user: ApiClient, login: Callable[[Page, ApiClient], None], page_guard: PageGuard
) -> None:
    page.goto("/")
    login(page, user)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/$"))
    expect(page.get_by_test_id("current-user")).to_have_count(0)
    expect(page.get_by_role("link", name="Log in", exact=True).first).to_be_visible()
    page_guard.expect("/api/coupons/mine/", 401)
    status = page.evaluate(
        "Surge.api('/api/coupons/mine/').then(() => 200, (error) => error.status)"
    )
    assert status == 401


def test_api_sends_the_csrf_token_and_puts_contract_errors_in_words(
    page: Page, user: ApiClient, login: Callable[[Page, ApiClient], None], page_guard: PageGuard
) -> None:
    page.goto("/")
    login(page, user)
    page_guard.expect("/api/orders/", 400)
    page_guard.expect("/api/coupons/campaigns/999999/", 404)
    # A 400 with fields (not a 403 CSRF refusal) proves the session's token went along.
    invalid = page.evaluate(
        """Surge.api('/api/orders/', {body: {}, idempotencyKey: true})
             .catch((error) => ({status: error.status, code: error.code,
                                 words: Surge.describe(error)}))"""
    )
    assert invalid["status"] == 400 and invalid["code"] == "invalid", invalid
    assert invalid["words"].endswith("Items: This field is required."), invalid
    missing = page.evaluate(
        "Surge.api('/api/coupons/campaigns/999999/').catch((error) => Surge.describe(error))"
    )
    assert missing == "That no longer exists, or it is not yours."


def test_live_socket_reconnects_and_resends_its_resume_frame(
    page: Page,
    user: ApiClient,
    login: Callable[[Page, ApiClient], None],
    page_guard: PageGuard,
    live_ws: LiveProcess,
) -> None:
    page.goto("/")
    login(page, user)
    check = page.locator("#ws-check")
    expect(check).to_have_attribute("data-echo", "connect-1")
    # While the ws process is down, Chromium logs each refused reconnect.
    page_guard.expect_console(r"^WebSocket connection to .* failed")
    live_ws.stop()
    try:
        expect(page.locator("#surge-status")).to_contain_text("retrying in")
    finally:
        live_ws.start()  # the later tests of the session share this process
    expect(check).to_have_attribute("data-echo", re.compile(r"connect-[2-9]"), timeout=20_000)
    expect(page.locator("#surge-status")).to_have_text("Live: connected.")


def test_the_guard_catches_failed_requests_and_console_errors(
    page: Page, page_guard: PageGuard
) -> None:
    page.goto("/")
    page.evaluate("fetch('/no-such-page/')")
    page.evaluate("console.error('something broke')")
    page.wait_for_timeout(300)
    problems = " ".join(page_guard.problems)
    assert "/no-such-page/ -> 404" in problems, problems
    assert "something broke" in problems, problems
    page_guard.problems.clear()  # seen: this test is about the guard itself
