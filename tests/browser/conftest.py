"""Browser tests: Playwright for Python driving Debian's Chromium against the live stack.

- `site`: the base URL of a gunicorn web process (as the Procfile runs it) that knows the
  ws process's port, on this session's test database and private Redis.
- `page`: a fresh browser context and page on `site`. The test FAILS on any console error,
  uncaught page error, or failed same-origin request (network failure, 4xx, 5xx), unless it
  said it expects it (`page_guard.expect(...)`, `page_guard.expect_console(...)`). On
  failure a screenshot lands in tests/browser/artifacts/ (git-ignored).
- `login(page, user)`: logs in through /accounts/login/ with the keyboard.

Playwright never downloads a browser here: it launches /usr/bin/chromium (apt package
`chromium`; `make test` installs it when it runs as root). Without it every browser test
is skipped with a reason starting "WARNING: browser tests did not run", and the session
summary repeats it, so a missing browser is never read as a pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import LOG_DIR
from tests.harness import ApiClient, LiveProcess, free_port, gunicorn_argv, http_ready

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = HERE / "artifacts"
NOT_RUN = (
    f"WARNING: browser tests did not run: {CHROMIUM} is missing "
    "(install Debian's `chromium` package; `make test` does it when run as root with apt-get)"
)
# Long enough for a loaded 2-core machine, short enough that a hang fails fast.
TIMEOUT_MS = 10_000

_not_run: list[str] = []
_reports = pytest.StashKey[dict[str, pytest.TestReport]]()
_guards = pytest.StashKey["PageGuard"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Chromium through Playwright against the live stack"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = not CHROMIUM.exists()
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.live)
            if missing:  # before any process starts for nothing
                item.add_marker(pytest.mark.skip(reason=NOT_RUN))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _not_run:
        terminalreporter.write_sep("!", NOT_RUN, red=True, bold=True)
        terminalreporter.write_line(f"{len(_not_run)} browser test(s) not run.", red=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    if report.skipped and report.when == "setup" and NOT_RUN in str(report.longrepr):
        _not_run.append(item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # After the test body, so the test fails (not errors in teardown) on what the page did.
    result = yield
    guard = item.stash.get(_guards, None)
    if guard is not None:
        guard.check()
    return result


@dataclass
class PageGuard:
    """What went wrong on the page that the test did not say it expects."""

    origin: str
    problems: list[str] = field(default_factory=list)
    _requests: list[tuple[re.Pattern[str], int | None]] = field(default_factory=list)
    _console: list[re.Pattern[str]] = field(default_factory=list)

    def expect(self, url: str, status: int | None = None) -> None:
        """A same-origin request whose URL contains `url` may fail (with `status`, or any)."""
        self._requests.append((re.compile(re.escape(url)), status))

    def expect_console(self, pattern: str) -> None:
        """Console errors matching the regular expression `pattern` are expected."""
        self._console.append(re.compile(pattern))

    def _same_origin(self, url: str) -> bool:
        return urlsplit(url)[:2] == urlsplit(self.origin)[:2]

    def _expected(self, url: str, status: int | None) -> bool:
        return any(
            rx.search(url) and (want is None or want == status) for rx, want in self._requests
        )

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        text = message.text
        if any(rx.search(text) for rx in self._console):
            return
        # Chromium also logs every 4xx/5xx resource as a console error; the response
        # handler decides about those.
        if text.startswith("Failed to load resource"):
            url = (message.location or {}).get("url", "")
            status = re.search(r"status of (\d{3})", text)
            if not self._same_origin(url) or self._expected(
                url, int(status.group(1)) if status else None
            ):
                return
        self.problems.append(f"console error: {text} ({message.location})")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"uncaught error in the page: {error}")

    def on_response(self, response: Response) -> None:
        status, url = response.status, response.url
        if status >= 400 and self._same_origin(url) and not self._expected(url, status):
            self.problems.append(f"failed request: {response.request.method} {url} -> {status}")

    def on_request_failed(self, request: Request) -> None:
        failure = request.failure or ""
        # A navigation cancels what the old page still had in flight: not a failure.
        if "ERR_ABORTED" in failure or not self._same_origin(request.url):
            return
        if not self._expected(request.url, None):
            self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def check(self) -> None:
        if self.problems:
            found, self.problems = self.problems, []
            raise AssertionError("the page went wrong:\n  " + "\n  ".join(found))


@pytest.fixture(scope="package")
def browser(live_env: dict[str, str]) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(NOT_RUN)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its event loop registered as running in this thread while
    # it lives: Django then refuses the ORM here (the test database's flush) and asgiref's
    # async_to_sync refuses to run (call it in another thread in a browser test). So the
    # browser lives for this package only, and the ORM is allowed meanwhile; `live_env` (a
    # copy taken before: this fixture depends on it) keeps the processes from inheriting it.
    unsafe = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        # Chromium's sandbox refuses to start as root (containers, CI).
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
        if unsafe is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = unsafe


@pytest.fixture(scope="session")
def _pages_web(live_env: dict[str, str], live_ws: LiveProcess) -> Iterator[LiveProcess]:
    # Not `live_web`: pages learn the ws port from settings (WS_BASE_URL), and `live_web`
    # starts without knowing which free port `live_ws` got.
    port = free_port()
    process = LiveProcess(
        "pages-web",
        gunicorn_argv(port),
        env=live_env | {"WS_BASE_URL": live_ws.url or ""},
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
def site(_pages_web: LiveProcess, live_ws: LiveProcess, transactional_db: None) -> str:
    """The web process's base URL; its pages' WebSockets go to `live_ws`."""
    for process in (_pages_web, live_ws):
        if not process.alive():  # a test may have stopped or killed it
            process.start()
    return _pages_web.url or ""


@pytest.fixture
def user(site: str) -> ApiClient:
    """A registered user (`.username`, password `pw-12345`, `.token`)."""
    return ApiClient(site).register()


@pytest.fixture
def page_guard(site: str, request: pytest.FixtureRequest) -> PageGuard:
    guard = PageGuard(site)
    request.node.stash[_guards] = guard
    return guard


@pytest.fixture
def page(
    browser: Browser, site: str, page_guard: PageGuard, request: pytest.FixtureRequest
) -> Iterator[Page]:
    context = browser.new_context(base_url=site)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("console", page_guard.on_console)
    page.on("pageerror", page_guard.on_page_error)
    page.on("response", page_guard.on_response)
    page.on("requestfailed", page_guard.on_request_failed)
    try:
        yield page
    finally:
        reports = request.node.stash.get(_reports, {})
        if any(r.failed for r in reports.values()):
            from playwright.sync_api import Error as PlaywrightError

            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
            shot = ARTIFACTS / f"{name}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failed page ({page.url}): {shot}")
            except PlaywrightError as error:  # the page may be what broke: the report matters more
                print(f"no screenshot: {error}")
        context.close()


@pytest.fixture
def login() -> Callable[[Page, ApiClient], None]:
    """`login(page, user)`: from the page the browser is on, through the header's link and
    /accounts/login/, with the keyboard; returns once back on that page, logged in."""

    def _login(page: Page, user: ApiClient) -> None:
        back = page.url
        page.get_by_role("link", name="Log in", exact=True).first.click()
        page.wait_for_url("**/accounts/login/**")
        page.get_by_label("Username").fill(user.username or "")
        page.get_by_label("Password").fill("pw-12345")
        page.get_by_label("Password").press("Enter")
        page.wait_for_url(back)
        assert page.get_by_test_id("current-user").inner_text() == user.username

    return _login
