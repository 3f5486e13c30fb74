"""Starts Surge the way production runs it, for benchmarks: DEBUG off, gunicorn with
cores + 1 sync workers (or `BENCH_WEB_WORKERS`), real Celery workers, a separate
`<db>_bench` database.

Used under `config.devservices exec` (what `make bench` does), so DATABASE_URL and
REDIS_URL point at running servers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from config.devservices import free_port, signal_child, start_child, stop_children

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOG_DIR = ROOT / ".run" / "bench"


def _bench_database_url(url: str) -> str:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "surge"
    if not name.endswith("_bench"):  # a second Stack in one run: Stack.django() exported it
        name = f"{name}_bench"
    return urlunsplit(parts._replace(path=f"/{name}"))


class Stack:
    """`with Stack() as stack:` gives `stack.web_url`, `stack.env`, `stack.token(...)`."""

    def __init__(
        self,
        *,
        web_workers: int | None = None,
        worker_procs: int = 1,
        worker_concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        worker_nice: int = 10,
        saga_procs: int = 1,
        saga_concurrency: int = 16,
    ) -> None:
        self.web_workers = web_workers or int(
            os.environ.get("BENCH_WEB_WORKERS") or (os.cpu_count() or 2) + 1
        )
        self.worker_procs = worker_procs
        self.worker_concurrency = worker_concurrency
        # The Procfile's worker_saga: saga turns on a threads pool (queue `saga`).
        self.saga_procs = saga_procs
        self.saga_concurrency = saga_concurrency
        self.worker_nice = worker_nice
        self.port = free_port()
        self.web_url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(48),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=_bench_database_url(os.environ["DATABASE_URL"]),
            LOG_LEVEL="WARNING",
            LAB_ENABLED="true",
            PYTHONUNBUFFERED="1",
            DJANGO_SUPERUSER_USERNAME="bench-admin",
            DJANGO_SUPERUSER_PASSWORD=secrets.token_urlsafe(16),
        )
        self.env.update(extra_env or {})

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Stack:
        from config.devservices import ensure_database

        ensure_database(self.env["DATABASE_URL"])
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage("bootstrap", "--no-demo")
        self.flush_redis_queues()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "web",
            [
                str(BIN / "gunicorn"),
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.web_workers),
                "--worker-class",
                "sync",
                "--keep-alive",
                "5",
                "--backlog",
                "2048",
                "--log-level",
                "warning",
            ],
        )
        for index in range(self.worker_procs):
            self._spawn_worker(f"worker{index}", "high,default,bulk", "prefork",
                               self.worker_concurrency)  # fmt: skip
        for index in range(self.saga_procs):
            self._spawn_worker(f"saga{index}", "saga", "threads", self.saga_concurrency)
        self._wait_ready()
        return self

    def _spawn_worker(self, name: str, queues: str, pool: str, concurrency: int) -> None:
        # Workers run at a lower CPU priority: on this one box they would otherwise
        # compete with the web processes for the same two cores, and deferred work is
        # meant to soak up what requests leave (in production they live on other hosts).
        # Each process here starts a session of its own, and with the kernel's autogroup
        # scheduling (sched_autogroup_enabled) a session's nice value only ranks its own
        # processes: between sessions it is the autogroup's nice that counts, so it is set.
        self._spawn(
            name,
            [
                "sh", "-c", 'echo "$0" > /proc/self/autogroup 2>/dev/null; exec "$@"',
                str(self.worker_nice),
                "nice", "-n", str(self.worker_nice), str(BIN / "celery"), "-A", "config",
                "worker", "-Q", queues, "--pool", pool, "--concurrency", str(concurrency),
                "--loglevel", "WARNING", "--hostname", f"bench-{name}-{os.getpid()}@%h",
                "--without-mingle", "--without-gossip",
            ],
        )  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        stop_children(self.procs, timeout=15)

    def _manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.procs.append(start_child(argv, output=LOG_DIR / f"{name}.log", env=self.env, cwd=ROOT))

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"{self.web_url}/readyz", timeout=3)
                if (
                    ready.status_code == 200
                    and ready.json().get("workers", 0) >= self.worker_procs + self.saga_procs
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"stack not ready; see logs in {LOG_DIR}")

    @contextlib.contextmanager
    def workers_paused(self) -> Iterator[None]:
        """Stops every Celery worker (SIGSTOP to its process group) for the block, so the
        web tier alone has the box; queued work waits in Redis and runs after SIGCONT."""
        workers = self.procs[1:]  # the first is gunicorn
        for proc in workers:
            signal_child(proc, signal.SIGSTOP)
        try:
            yield
        finally:
            for proc in workers:
                signal_child(proc, signal.SIGCONT)

    # --- helpers for scenarios ---------------------------------------------------------
    def django(self) -> Any:
        """Set up Django in this process against the bench database (for fixtures)."""
        os.environ.update(
            {
                k: self.env[k]
                for k in (
                    "DATABASE_URL",
                    "DJANGO_SETTINGS_MODULE",
                    "DJANGO_DEBUG",
                    "DJANGO_SECRET_KEY",
                    "DJANGO_ALLOWED_HOSTS",
                )
            }
        )
        import django

        django.setup()
        return django

    def tokens(self, count: int, prefix: str = "bench") -> list[str]:
        """`count` users with API tokens (created once, reused by later runs)."""
        self.django()
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        user_model = get_user_model()
        keys = []
        for index in range(count):
            user, created = user_model.objects.get_or_create(username=f"{prefix}-{index}")
            if created:
                user.set_unusable_password()
                user.save()
            keys.append(Token.objects.get_or_create(user=user)[0].key)
        return keys

    def flush_redis_queues(self) -> None:
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        from config.celery import QUEUES

        for queue in QUEUES:
            client.delete(queue)
