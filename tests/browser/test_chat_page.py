"""/chat/: two people chat in one room, and one who was offline sees what they missed."""

from __future__ import annotations

import threading
from collections.abc import Callable

from playwright.sync_api import Browser, Page, expect

from apps.chat import services
from tests.harness import ApiClient, LiveProcess

from .conftest import TIMEOUT_MS, PageGuard


def _store_elsewhere(room_id: int, user_id: int, body: str) -> None:
    # In another thread: Playwright's loop is registered as running in this one, and the
    # live event after the commit needs async_to_sync.
    worker = threading.Thread(
        target=services.message_send,
        kwargs={"room_id": room_id, "sender_id": user_id, "body": body, "client_msg_id": body},
    )
    worker.start()
    worker.join()


def test_two_people_chat_and_a_reconnecting_page_catches_up(
    page: Page,
    browser: Browser,
    site: str,
    login: Callable[[Page, ApiClient], None],
    page_guard: PageGuard,
    live_ws: LiveProcess,
) -> None:
    ann, bob = ApiClient(site).register(), ApiClient(site).register()
    room = ann.post("/api/chat/rooms/", json={"name": "lunch"}).json()
    assert bob.post(f"/api/chat/rooms/{room['id']}/join/").status_code == 200

    bob_context = browser.new_context(base_url=site)
    bob_context.set_default_timeout(TIMEOUT_MS)
    bob_page = bob_context.new_page()
    try:
        for who, tab in ((ann, page), (bob, bob_page)):
            tab.goto("/")
            login(tab, who)
            tab.goto(f"/chat/?room={room['id']}")
            expect(tab.locator("#room-heading")).to_have_text("lunch")
            expect(tab.locator("#surge-status")).to_have_text("Live: connected.")

        page.get_by_label("Message", exact=True).fill("hello bob")
        page.get_by_label("Message", exact=True).press("Enter")
        bob_messages = bob_page.locator("#messages li[data-seq]")
        expect(bob_messages).to_have_count(1)
        expect(bob_messages.first).to_contain_text("hello bob")
        expect(page.locator("#messages li[data-seq]")).to_have_count(1)

        # Both pages lose the ws process; ann types meanwhile and bob misses a message.
        page_guard.expect_console(r"^WebSocket connection to .* failed")
        live_ws.stop()
        try:
            expect(bob_page.locator("#surge-status")).to_contain_text("retrying in")
            _store_elsewhere(room["id"], bob.user_id or 0, "stored while you were away")
            page.get_by_label("Message", exact=True).fill("typed while offline")
            page.get_by_label("Message", exact=True).press("Enter")
            expect(page.locator("#messages li.pending")).to_have_count(1)
        finally:
            live_ws.start()  # the later tests of the session share this process
        for tab in (page, bob_page):
            rows = tab.locator("#messages li[data-seq]")
            expect(rows).to_have_count(3, timeout=25_000)
            expect(rows.nth(1)).to_contain_text("stored while you were away")
            expect(rows.nth(2)).to_contain_text("typed while offline")
            expect(tab.locator("#messages li.pending")).to_have_count(0)
        # Stored once, though the page sent it again on reconnect if unsure.
        history = bob.get(f"/api/chat/rooms/{room['id']}/messages/").json()["results"]
        assert [m["body"] for m in history] == [
            "hello bob",
            "stored while you were away",
            "typed while offline",
        ]
    finally:
        bob_context.close()


def test_a_room_the_person_is_not_in_says_so_and_offers_a_join(
    page: Page, site: str, login: Callable[[Page, ApiClient], None]
) -> None:
    owner, visitor = ApiClient(site).register(), ApiClient(site).register()
    room = owner.post("/api/chat/rooms/", json={"name": "book club"}).json()
    page.goto("/")
    login(page, visitor)
    page.goto(f"/chat/?room={room['id']}")
    expect(page.locator("#room-error")).to_contain_text("not in this room")
    page.get_by_role("button", name="Join book club").click()
    expect(page.locator("#room-heading")).to_have_text("book club")
    expect(page.locator("#surge-status")).to_have_text("Live: connected.")
    page.get_by_label("Message", exact=True).fill("hi all")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator("#messages li[data-seq]")).to_have_count(1)
