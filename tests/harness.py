"""Real processes for live tests, and small clients to drive them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from config.devservices import free_port as free_port  # the tests take it from here too
from config.devservices import signal_child, start_child, stop_children

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Polls until `condition()` is truthy and returns it; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


def database_url_of(db: dict[str, Any]) -> str:
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{db['NAME']}"


def http_ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_ready(base_url: str, *, timeout: float = 60, what: str = "readiness") -> None:
    """Waits until `/readyz` answers 200: PostgreSQL, Redis, the broker and a live worker.
    After Redis comes back, processes reconnect by themselves; a test that stopped or
    restarted it waits for this, or the next test may publish before a worker listens."""

    def ready() -> bool:
        try:  # /readyz asks the workers for a reply, which takes a moment
            return requests.get(f"{base_url}/readyz", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, timeout=timeout, interval=0.5, what=what)


# Every queue of config/celery.py: a test worker serves all the Procfile's workers serve.
ALL_QUEUES = "high,default,bulk,saga"


def worker_argv(
    hostname: str, *, queues: str = ALL_QUEUES, concurrency: int = 2, pool: str = "prefork"
) -> list[str]:
    """A Celery worker as the Procfile runs it (mingle/gossip off: faster, and tests never
    need workers to know each other). `pool="threads"` is how `worker_saga` runs."""
    return [
        "celery", "-A", "config", "worker", "-Q", queues, "--pool", pool,
        "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--hostname", f"{hostname}-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def beat_argv() -> list[str]:
    """Celery beat as the Procfile runs it (its schedule lives in the database)."""
    return ["celery", "-A", "config", "beat", "--loglevel", "INFO"]


def gunicorn_argv(port: int, *, workers: int = 2) -> list[str]:
    return [
        "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip


def worker_ready(process: LiveProcess) -> bool:
    return " ready." in process.log_text()


class LiveProcess:
    """A subprocess in its own process group, logging to a file the test can read."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[LiveProcess], bool],
        url: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = [str(BIN / argv[0]), *argv[1:]]
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.ready = ready
        self.url = url
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Starts the process without waiting. Call it from the main thread: the child is
        told to die with the thread that started it (see `start_child`), so a pytest run
        that is itself SIGKILLed leaves no live servers behind."""
        self.proc = start_child(
            self.argv, output=self.log_path, env=self.env, cwd=ROOT, die_with_parent=True
        )

    def wait_ready(self) -> None:
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + self.ready_timeout
        while not self.ready(self):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in time:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no acks, as in a crash."""
        if self.proc is not None:
            signal_child(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL for what is left after 10 s (orphaned children too)."""
        if self.proc is not None:
            stop_children([self.proc])

    def restart(self) -> None:
        self.stop()
        self.start()


class ApiClient:
    """requests against the live web process, with the token and JSON conveniences."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.session = requests.Session()
        self.user_id: int | None = None
        self.username: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Token {self.token}"
        kwargs.setdefault("timeout", 15)
        return self.session.request(method, self.base_url + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kwargs)

    def register(self, username: str | None = None, password: str = "pw-12345") -> ApiClient:
        """A new user; returns a client that sends its token."""
        username = username or f"user-{uuid.uuid4().hex[:12]}"
        response = requests.post(
            f"{self.base_url}/api/auth/register/",
            json={"username": username, "password": password},
            timeout=15,
        )
        assert response.status_code == 201, response.text
        client = ApiClient(self.base_url, token=response.json()["token"])
        client.user_id = response.json()["id"]
        client.username = username
        return client
