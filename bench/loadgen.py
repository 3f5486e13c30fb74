"""HTTP load generator for the bench scenarios.

Two engines behind one call, :func:`run_load`:

* ``wrk`` (when installed and the request set fits): a generated Lua script rotates
  bodies / header sets (or whole pre-rendered requests, see :class:`Request`) and its
  ``done`` hook prints one JSON line with exact status counts, percentiles and socket
  errors, so nothing is scraped from wrk's text output.  With ``rate`` and
  ``prefer="wrk"`` its ``delay()`` hook paces the requests to approximate an offered rate.
* a built-in asyncio generator (raw ``asyncio.open_connection``, HTTP/1.1 keep-alive,
  Content-Length and chunked bodies, uvloop when importable).  Its ``rate`` is a true
  open loop (latency from the scheduled start, free of coordinated omission), but one
  Python process is also the costlier generator on a box it shares with the server.

Many URLs of one server, each with its own method, headers and body: pass ``requests``
(a list of :class:`Request`); both engines rotate over them.

Only ever point this at 127.0.0.1 / localhost servers that the bench started itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["LoadResult", "Request", "format_table", "main", "run_load"]

REQUEST_TIMEOUT_S = 5.0
WRK_THREADS = 2  # the bench machine has 2 cores
_WRK_MARKER = "LOADGEN_JSON "
# Socket-error kinds, named like wrk's summary.errors fields so both engines agree.
_SOCKET_ERROR_KINDS = ("connect", "read", "write", "timeout")


@dataclass
class LoadResult:
    """Outcome of one load run.

    ``requests`` counts complete HTTP responses of any status (== sum of
    ``status_counts``).  ``errors`` counts non-2xx responses plus socket
    errors/timeouts (the latter never produced a response, so they are not in
    ``requests``).  ``rps`` is *successful* throughput: completed 2xx responses per
    second of the measurement window.  Latency percentiles are in milliseconds over
    all complete responses in the window (warmup excluded).
    """

    name: str
    requests: int
    errors: int
    status_counts: dict[int, int]
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    tool: str
    concurrency: int
    # Breakdown of socket-level failures: connect/read/write/timeout.
    socket_errors: dict[str, int] = field(default_factory=dict)
    # Target rate (requests/s) for open-loop runs, None for closed loop.
    rate: float | None = None
    # Open loop only: requests scheduled in the window that never started before the
    # deadline because all `concurrency` slots were busy (a sign of overload).  Paced wrk:
    # slots of rate x duration that were never sent.
    dropped: int = 0
    # Paced wrk only: requests sent more than 10 ms after their slot (no free connection).
    late: int = 0


# --------------------------------------------------------------------------- request set


@dataclass(frozen=True)
class Request:
    """One request of a ``requests`` rotation: a path (with query) on the run's server.

    Its ``headers`` are merged over the run's ``headers``.
    """

    path: str
    method: str = "GET"
    headers: dict[str, str] | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class _Target:
    """Parsed URL plus the rotating request variants."""

    host: str
    port: int
    host_header: str
    path: str
    method: str
    header_sets: list[dict[str, str]]  # already merged with the base headers
    bodies: list[bytes | None]
    # `requests` mode: every request rendered in full (head and body), rotated in order.
    rendered: list[bytes] | None = None


def _build_target(
    url: str,
    method: str,
    headers: dict[str, str] | None,
    body: bytes | None,
    bodies: list[bytes] | None,
    header_sets: list[dict[str, str]] | None,
    requests: list[Request] | None = None,
) -> _Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only plain http://host[:port]/path URLs are supported: {url!r}")
    if body is not None and bodies:
        raise ValueError("pass either body or bodies, not both")
    port = parts.port or 80
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    base = dict(headers or {})
    if requests is not None:
        extra = (method, body, bodies, header_sets)
        return _requests_target(parts.hostname, port, host_header, base, requests, *extra)
    merged = [{**base, **hs} for hs in header_sets] if header_sets else [base]
    for hs in merged:
        _check_headers(hs)
    return _Target(
        host=parts.hostname,
        port=port,
        host_header=host_header,
        path=path,
        method=method.upper(),
        header_sets=merged,
        bodies=list(bodies) if bodies else [body],
    )


def _requests_target(
    host: str,
    port: int,
    host_header: str,
    base: dict[str, str],
    requests: list[Request],
    method: str,
    body: bytes | None,
    bodies: list[bytes] | None,
    header_sets: list[dict[str, str]] | None,
) -> _Target:
    if not requests:
        raise ValueError("requests must not be empty")
    if body is not None or bodies or header_sets or method.upper() != "GET":
        raise ValueError("with requests, give method/body/bodies/header_sets per Request")
    rendered = []
    for req in requests:
        if not req.path.startswith("/"):
            raise ValueError(f"a Request path starts with '/': {req.path!r}")
        if req.method.upper() == "HEAD":
            raise ValueError("HEAD is not supported in requests")  # see _wrk_limitation
        if any(c in req.path + req.method for c in " \r\n"):
            raise ValueError(f"invalid method or path: {req.method!r} {req.path!r}")
        hs = {**base, **(req.headers or {})}
        _check_headers(hs)
        one = _Target(host, port, host_header, req.path, req.method.upper(), [hs], [req.body])
        heads, tails = _render_requests(one)
        rendered.append(heads[0] + tails[0])
    return _Target(
        host=host,
        port=port,
        host_header=host_header,
        path=requests[0].path,
        method=requests[0].method.upper(),
        header_sets=[base],
        bodies=[None],
        rendered=rendered,
    )


def _check_headers(headers: dict[str, str]) -> None:
    # Header injection would silently corrupt the stream of pipelined keep-alive requests.
    for key, value in headers.items():
        if any(c in key + value for c in "\r\n") or ":" in key or not key:
            raise ValueError(f"invalid header {key!r}: {value!r}")


# ------------------------------------------------------------------------------- helpers


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _count_errors(status_counts: dict[int, int], socket_errors: dict[str, int]) -> int:
    non_2xx = sum(n for code, n in status_counts.items() if not 200 <= code < 300)
    return non_2xx + sum(socket_errors.values())


def _count_2xx(status_counts: dict[int, int]) -> int:
    return sum(n for code, n in status_counts.items() if 200 <= code < 300)


# ------------------------------------------------------------------------ asyncio engine


class _ProtocolError(Exception):
    """The server sent something that is not a parseable HTTP/1.x response."""


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        # No wait_closed(): the bench must never hang on a peer that does not FIN back.
        self.writer.close()


def _render_requests(target: _Target) -> tuple[list[bytes], list[bytes]]:
    """Pre-render request heads (one per header set) and tails (one per body).

    Request i is ``heads[i % H] + tails[i % B]``, so rotating costs one concatenation.
    """
    heads = []
    for hs in target.header_sets:
        lines = [f"{target.method} {target.path} HTTP/1.1"]
        if not any(k.lower() == "host" for k in hs):
            lines.append(f"Host: {target.host_header}")
        lines += [f"{k}: {v}" for k, v in hs.items() if k.lower() != "content-length"]
        heads.append(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    tails = []
    for b in target.bodies:
        if b is None:
            tails.append(b"\r\n")
        else:
            tails.append(f"Content-Length: {len(b)}\r\n\r\n".encode("ascii") + b)
    return heads, tails


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    """Split a response head into (http version, status, lower-cased headers)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _ProtocolError(f"bad status line {lines[0]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {line!r}")
        name = name.strip().lower()
        # Repeated headers (e.g. Transfer-Encoding) are joined like RFC 9110 allows.
        value = value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return parts[0], int(parts[1]), fields


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _ProtocolError(f"bad chunk size {size_line!r}") from exc
        if size == 0:
            # Trailer section: header lines until an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        await reader.readexactly(size + 2)  # chunk data + CRLF


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, bool]:
    """Read one full response; return (status, connection reusable)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from exc
            raise
        except asyncio.LimitOverrunError as exc:
            raise _ProtocolError("response head too large") from exc
        version, status, fields = _parse_head(head)
        if not 100 <= status < 200:  # skip interim 1xx responses
            break
    conn_tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    keep = "keep-alive" in conn_tokens if version == "HTTP/1.0" else "close" not in conn_tokens
    if method == "HEAD" or status in (204, 304):
        return status, keep
    if "chunked" in fields.get("transfer-encoding", "").lower():
        await _read_chunked(reader)
    elif "content-length" in fields:
        try:
            length = int(fields["content-length"])
        except ValueError as exc:
            raise _ProtocolError("bad Content-Length") from exc
        await reader.readexactly(length)
    else:
        # No framing: the body runs until the server closes the connection.
        while await reader.read(65536):
            pass
        keep = False
    return status, keep


class _Run:
    """State shared by all workers of one asyncio run (single loop, so no locks)."""

    def __init__(
        self,
        target: _Target,
        concurrency: int,
        warmup_s: float,
        duration_s: float,
        rate: float | None,
    ) -> None:
        self.target = target
        self.concurrency = concurrency
        self.rate = rate
        self.heads, self.tails = _render_requests(target)
        self.t0 = time.perf_counter()
        self.measure_start = self.t0 + warmup_s
        self.end = self.measure_start + duration_s
        self.next_index = 0  # request index, drives header/body rotation
        self.next_slot = 0  # open loop: next schedule slot
        self.latencies: list[float] = []
        self.status_counts: Counter[int] = Counter()
        self.socket_errors: Counter[str] = Counter()

    def take_request(self) -> bytes:
        i = self.next_index
        self.next_index += 1
        if self.target.rendered is not None:
            return self.target.rendered[i % len(self.target.rendered)]
        return self.heads[i % len(self.heads)] + self.tails[i % len(self.tails)]

    async def next_start(self) -> float | None:
        """Start time of the next request of this worker, or None when the run is over.

        Closed loop starts right away.  Open loop hands out fixed slots t0 + k/rate and
        sleeps until the slot; a worker that frees up late still uses the *scheduled*
        time, so queueing delay shows up in latency (no coordinated omission).
        """
        now = time.perf_counter()
        if now >= self.end:
            return None
        if self.rate is None:
            return now
        scheduled = self.t0 + self.next_slot / self.rate
        if scheduled >= self.end:
            return None
        self.next_slot += 1
        if scheduled > now:
            await asyncio.sleep(scheduled - now)
        return scheduled

    def scheduled_in_window(self) -> int:
        """Open loop: how many slots fall inside [measure_start, end)."""
        assert self.rate is not None
        first = math.ceil((self.measure_start - self.t0) * self.rate)
        last = math.ceil((self.end - self.t0) * self.rate)  # exclusive
        return max(0, last - first)

    def record(self, start: float, outcome: int | str) -> None:
        # Requests are attributed to the window by their (scheduled) start: this counts
        # exactly rate x duration in steady state and keeps warmup traffic out.
        if start < self.measure_start:
            return
        if isinstance(outcome, int):
            self.status_counts[outcome] += 1
            self.latencies.append(time.perf_counter() - start)
        else:
            self.socket_errors[outcome] += 1


async def _exchange(
    run: _Run, conn: _Conn | None, request: bytes
) -> tuple[_Conn | None, int | str]:
    """Send one request (reconnecting as needed); return (connection, status or error kind)."""
    for _ in range(2):  # second pass only after a stale keep-alive connection
        reused = conn is not None
        if conn is None:
            try:
                reader, writer = await asyncio.open_connection(run.target.host, run.target.port)
            except OSError:
                return None, "connect"
            conn = _Conn(reader, writer)
        try:
            conn.writer.write(request)
            await conn.writer.drain()
        except OSError:
            conn.close()
            conn = None
            if reused:
                continue  # idle connection closed by the server: retry once on a fresh one
            return None, "write"
        try:
            status, keep = await _read_response(conn.reader, run.target.method)
        except (_StaleConnection, ConnectionResetError):
            # EOF/RST before any answer on a reused connection means the server dropped it
            # while idle (keep-alive timeout), so the request was never processed.
            conn.close()
            conn = None
            if reused:
                continue
            return None, "read"
        except (OSError, asyncio.IncompleteReadError, _ProtocolError):
            conn.close()
            return None, "read"
        if not keep:
            conn.close()
            conn = None
        return conn, status
    return None, "read"


async def _worker(run: _Run) -> None:
    """One connection-worker: at most one request in flight, one keep-alive connection."""
    conn: _Conn | None = None
    try:
        while (start := await run.next_start()) is not None:
            request = run.take_request()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    conn, outcome = await _exchange(run, conn, request)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                conn, outcome = None, "timeout"
            run.record(start, outcome)
            if outcome == "connect":
                # Without a pause a dead server turns every worker into a busy loop.
                await asyncio.sleep(0.01)
    finally:
        if conn is not None:
            conn.close()


async def _run_asyncio(
    name: str,
    target: _Target,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rate: float | None,
) -> LoadResult:
    run = _Run(target, concurrency, warmup_s, duration_s, rate)
    tasks = [asyncio.create_task(_worker(run)) for _ in range(concurrency)]
    # Workers stop starting requests at run.end; in-flight ones are bounded by the
    # per-request timeout.  The extra margin is a safety net that cannot normally fire.
    budget = warmup_s + duration_s + REQUEST_TIMEOUT_S + 5.0
    _done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Server trouble is recorded as errors, so an exception here is a loadgen bug: surface it.
    for task in tasks:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            raise exc
    return _asyncio_result(name, run, duration_s)


def _asyncio_result(name: str, run: _Run, duration_s: float) -> LoadResult:
    lat = sorted(run.latencies)
    status_counts = dict(sorted(run.status_counts.items()))
    socket_errors = {k: run.socket_errors.get(k, 0) for k in _SOCKET_ERROR_KINDS}
    dropped = 0
    if run.rate is not None:
        started = sum(status_counts.values()) + sum(socket_errors.values())
        dropped = max(0, run.scheduled_in_window() - started)
    return LoadResult(
        name=name,
        requests=sum(status_counts.values()),
        errors=_count_errors(status_counts, socket_errors),
        status_counts=status_counts,
        duration_s=duration_s,
        rps=_count_2xx(status_counts) / duration_s,
        p50_ms=_percentile(lat, 50) * 1000,
        p90_ms=_percentile(lat, 90) * 1000,
        p99_ms=_percentile(lat, 99) * 1000,
        max_ms=(lat[-1] * 1000) if lat else 0.0,
        tool="asyncio",
        concurrency=run.concurrency,
        socket_errors=socket_errors,
        rate=run.rate,
        dropped=dropped,
    )


def _asyncio_main(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run a coroutine on uvloop when available (much cheaper per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ---------------------------------------------------------------------------- wrk engine


def _lua_str(data: bytes | str) -> str:
    """Lua string literal for arbitrary bytes (3-digit decimal escapes are unambiguous)."""
    raw = data.encode("latin-1") if isinstance(data, str) else data
    out = []
    for byte in raw:
        ch = chr(byte)
        if 32 <= byte < 127 and ch not in '"\\':
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua_headers(headers: dict[str, str], host_header: str) -> str:
    items = dict(headers)
    if not any(k.lower() == "host" for k in items):
        items["Host"] = host_header  # older wrk.format versions need it in the table
    items = {k: v for k, v in items.items() if k.lower() != "content-length"}
    return "{" + ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in items.items()) + "}"


def _lua_array(name: str, items: list[str], chunk: int = 500) -> str:
    """``local NAME = {...}`` built in chunks of small functions.

    LuaJIT allows at most 65536 constants per function, which one big table literal
    exceeds at ~20k+ header sets; each chunk function has its own constant table.
    """
    out = [f"local {name} = {{}}"]
    for first in range(0, len(items), chunk):
        sets = "\n".join(
            f"  t[{first + k + 1}] = {item}" for k, item in enumerate(items[first : first + chunk])
        )
        out.append(f"do\n local function fill(t)\n{sets}\n end\n fill({name})\nend")
    return "\n".join(out)


_LUA_STATS = """
-- Per-thread status counts, merged in done() via thread:get (tables are copied).
local threads = {}
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

statuses = {}
late = 0
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  local late_total = 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for code, n in pairs(s) do counts[code] = (counts[code] or 0) + n end
    end
    late_total = late_total + (t:get("late") or 0)
  end
  local parts = {}
  for code, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'LOADGEN_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, ' ..
    '"max_us": %.0f, "late": %d, "status": {%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, late_total, table.concat(parts, ", ")))
end
"""

_LUA_ROTATE = """
local hi, bi = 0, 0
function init(args)
  -- Each thread walks the whole rotation, starting at its own offset, so every header
  -- set / body gets an equal share even when the threads run at different speeds.
  local t = tid or 0
  hi = t * math.floor(#HEADER_SETS / NTHREADS)
  bi = t * math.floor(#BODIES / NTHREADS)
end
function request()
  local h = HEADER_SETS[(hi % #HEADER_SETS) + 1]
  local b = BODIES[(bi % #BODIES) + 1]
  hi, bi = hi + 1, bi + 1
  if b == false then b = nil end
  return wrk.format(METHOD, PATH, h, b)
end
"""


_LUA_RENDERED = """
local ri = 0
function init(args)
  -- Each thread walks the whole list from its own offset (see _LUA_ROTATE).
  ri = (tid or 0) * math.floor(#REQUESTS / NTHREADS)
end
function request()
  local r = REQUESTS[(ri % #REQUESTS) + 1]
  ri = ri + 1
  return r
end
"""

# wrk calls delay() before every request of a connection (also the first one after each
# (re)connect) and waits that many whole milliseconds.  Each call claims the thread's next
# slot of a fixed schedule; a slot whose time has passed (no connection was free) is sent
# at once and counted late, so a server that cannot keep up shows as late/dropped slots,
# not as silently lower pacing.  wrk's latency clock starts after the delay.
_LUA_PACE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } loadgen_timespec;
int clock_gettime(int clk_id, loadgen_timespec *tp);
]]
local ts = ffi.new("loadgen_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local t0 = nil
local slot = 0
function delay()
  local now = now_ms()
  if t0 == nil then
    -- The threads' schedules interleave instead of firing together.
    t0 = now + (tid or 0) * INTERVAL_MS / NTHREADS
  end
  local due = t0 + slot * INTERVAL_MS
  slot = slot + 1
  if due <= now then
    if now - due > 10 then late = late + 1 end
    return 0
  end
  return math.floor(due - now + 0.5)
end
"""


def _wrk_script(target: _Target, threads: int, rate: float | None = None) -> str:
    """Lua script: stats hooks plus a static, a rotating or a pre-rendered request set,
    and with `rate` a `delay()` hook that paces each thread at rate / threads."""
    lines = ["-- generated by bench/loadgen.py", f"local NTHREADS = {threads}"]
    rotating = len(target.header_sets) > 1 or len(target.bodies) > 1
    if rate is not None:
        lines += [f"local INTERVAL_MS = {threads * 1000.0 / rate!r}", _LUA_PACE]
    if target.rendered is not None:
        lines += [
            _lua_array("REQUESTS", [_lua_str(r) for r in target.rendered]),
            _LUA_RENDERED,
        ]
    elif rotating:
        header_sets = [_lua_headers(h, target.host_header) for h in target.header_sets]
        # `false` stands for "no body": Lua tables cannot hold nil.
        bodies = ["false" if b is None else _lua_str(b) for b in target.bodies]
        lines += [
            f"local METHOD = {_lua_str(target.method)}",
            f"local PATH = {_lua_str(target.path)}",
            _lua_array("HEADER_SETS", header_sets),
            _lua_array("BODIES", bodies),
            _LUA_ROTATE,
        ]
    else:
        # Static request: wrk formats it once per connection, the fastest path.
        lines.append(f"wrk.method = {_lua_str(target.method)}")
        lines.append(f"wrk.path = {_lua_str(target.path)}")
        lines.append(f"wrk.headers = {_lua_headers(target.header_sets[0], target.host_header)}")
        if target.bodies[0] is not None:
            lines.append(f"wrk.body = {_lua_str(target.bodies[0])}")
    lines.append(_LUA_STATS)
    return "\n".join(lines)


def _wrk_cmd(url: str, script: str, threads: int, conns: int, seconds: int) -> list[str]:
    timeout = f"{math.ceil(REQUEST_TIMEOUT_S)}s"
    return [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{seconds}s",
        "--timeout",
        timeout,
        "-s",
        script,
        url,
    ]


def _run_wrk_process(cmd: list[str], seconds: int) -> dict[str, Any]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT_S + 30, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_WRK_MARKER):
            data: dict[str, Any] = json.loads(line[len(_WRK_MARKER) :])
            return data
    raise RuntimeError(
        f"wrk failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
    )


def _run_wrk(
    name: str,
    url: str,
    target: _Target,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rate: float | None = None,
) -> LoadResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not on PATH (apt-get install wrk)")
    threads = min(WRK_THREADS, concurrency)
    conns = (concurrency // threads) * threads  # wrk gives each thread conns/threads
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        script = os.path.join(tmp, "loadgen.lua")
        with open(script, "w", encoding="latin-1") as fh:
            fh.write(_wrk_script(target, threads, rate))
        if warmup_s > 0:
            # wrk has no warmup option: a separate short run warms the server instead.
            warm = max(1, round(warmup_s))
            _run_wrk_process(_wrk_cmd(url, script, threads, conns, warm), warm)
        seconds = max(1, round(duration_s))  # wrk only takes whole seconds
        data = _run_wrk_process(_wrk_cmd(url, script, threads, conns, seconds), seconds)
    return _wrk_result(name, data, conns, rate)


def _wrk_result(
    name: str, data: dict[str, Any], conns: int, rate: float | None = None
) -> LoadResult:
    status_counts = {
        int(k): int(v) for k, v in sorted(data["status"].items(), key=lambda kv: int(kv[0]))
    }
    socket_errors = {k: int(data[k]) for k in _SOCKET_ERROR_KINDS}
    duration = data["duration_us"] / 1e6
    dropped = 0
    if rate is not None:
        # Slots of the schedule never sent (wrk counts responses; socket errors were sent).
        sent = int(data["requests"]) + sum(socket_errors.values())
        dropped = max(0, round(rate * duration) - sent)
    return LoadResult(
        name=name,
        requests=int(data["requests"]),
        errors=_count_errors(status_counts, socket_errors),
        status_counts=status_counts,
        duration_s=duration,
        rps=_count_2xx(status_counts) / duration if duration > 0 else 0.0,
        # wrk reports latency in microseconds.
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        tool="wrk",
        concurrency=conns,
        socket_errors=socket_errors,
        rate=rate,
        dropped=dropped,
        late=int(data.get("late", 0)),
    )


# ------------------------------------------------------------------------------ public API


def _wrk_limitation(target: _Target, rate: float | None) -> str | None:
    """Why wrk cannot run this request set (in "auto"), or None when it can.

    Fixed or rotating methods/headers/bodies and whole pre-rendered requests are all
    expressible in the generated Lua script; what is not: HEAD, whose Content-Length wrk's
    parser waits on for a body that never comes (it hangs). A fixed rate is only an
    approximation in wrk (paced connections, latency from the send), so "auto" keeps the
    asyncio open loop for it and paced wrk has to be asked for (`prefer="wrk"`).
    """
    if target.method == "HEAD":
        return "wrk waits for a body after HEAD responses"
    if rate is not None:
        return "wrk only approximates a fixed rate"
    return None


def _choose_tool(prefer: str, target: _Target, rate: float | None) -> str:
    if prefer not in ("auto", "wrk", "asyncio"):
        raise ValueError(f"prefer must be auto, wrk or asyncio, not {prefer!r}")
    limitation = _wrk_limitation(target, rate)
    if prefer == "wrk" and limitation and rate is None:  # only pacing is wrk's to approximate
        raise ValueError(f"{limitation}; use prefer='asyncio' or 'auto'")
    if prefer == "auto":
        return "wrk" if limitation is None and shutil.which("wrk") else "asyncio"
    return prefer


def run_load(
    *,
    name: str,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    bodies: list[bytes] | None = None,
    header_sets: list[dict[str, str]] | None = None,
    requests: list[Request] | None = None,
    concurrency: int = 64,
    duration_s: float = 10.0,
    warmup_s: float = 1.0,
    rate: float | None = None,
    prefer: str = "auto",
) -> LoadResult:
    """Load ``url`` and return a :class:`LoadResult` (``rps`` = completed 2xx per second).

    Request i uses ``header_sets[i % len]`` merged over ``headers`` and
    ``bodies[i % len]`` (or the fixed ``body``).  With ``requests``, ``url`` names only
    the server (its path is ignored) and request i is ``requests[i % len]`` (its own
    path, method, headers over ``headers``, body); ``method``/``body``/``bodies``/
    ``header_sets`` must then be left out.  ``concurrency`` is the number of
    connections (closed loop) or the cap on requests in flight (``rate`` set: open loop,
    requests start every 1/rate s and latency counts from the scheduled start).
    ``rate`` with ``prefer="wrk"``: wrk's ``delay()`` hook hands each connection the
    next slot of a rate / threads schedule per wrk thread; a slot without a free
    connection is sent as soon as one frees (``late``), ``dropped`` counts slots never
    sent, and latency counts from the send (not from the slot).
    ``warmup_s`` of traffic is sent first and excluded from the numbers.  Each request
    times out after 5 s, so the call returns within about warmup + duration + 5 s.
    ``prefer``: "auto" (wrk when installed, ``rate`` is None and the method is not
    HEAD), "wrk" (also paced, with ``rate``) or "asyncio".

    Engine differences: wrk takes whole seconds (durations are rounded, minimum 1 s),
    runs warmup as a separate wrk process, starts its latency clock when the request is
    written, and raises RuntimeError if it cannot connect at all.  The asyncio engine
    counts (re)connect time in latency (visible with Connection: close servers) and
    reports a dead server as connect errors.  One asyncio process uses one core.

    Must be called from synchronous code (it runs its own event loop).
    """
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("need concurrency >= 1, duration_s > 0, warmup_s >= 0")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    target = _build_target(url, method, headers, body, bodies, header_sets, requests)
    tool = _choose_tool(prefer, target, rate)
    if tool == "wrk":
        return _run_wrk(name, url, target, concurrency, duration_s, warmup_s, rate)
    return _asyncio_main(_run_asyncio(name, target, concurrency, duration_s, warmup_s, rate))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_table(results: list[LoadResult], extra_cols: dict[str, list[str]] | None = None) -> str:
    """Markdown table, one row per result; ``extra_cols`` maps a header to one cell per row."""
    extra_cols = extra_cols or {}
    for col, cells in extra_cols.items():
        if len(cells) != len(results):
            raise ValueError(f"extra column {col!r} has {len(cells)} cells for {len(results)} rows")
    header = ["name", "tool", "conc", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"]
    header += list(extra_cols)
    rows = [header, ["---"] * len(header)]
    for idx, r in enumerate(results):
        row = [
            r.name,
            r.tool,
            str(r.concurrency),
            f"{r.rps:.1f}",
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
        ]
        row += [cells[idx] for cells in extra_cols.values()]
        rows.append(row)
    return "\n".join("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)


def _parse_header_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"header must look like 'Key: value', got {text!r}")
    return key.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m bench.loadgen URL [-c 64] [-d 5] [-X POST] [-H 'K: V'] ...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("-w", "--warmup", type=float, default=1.0, help="seconds")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", type=_parse_header_arg, default=[])
    parser.add_argument("--data", help="request body (sent as UTF-8)")
    parser.add_argument(
        "--rate", type=float, help="offered requests/s (asyncio open loop; paced with --prefer wrk)"
    )
    parser.add_argument("--prefer", choices=["auto", "asyncio", "wrk"], default="auto")
    parser.add_argument("--name", default="cli")
    args = parser.parse_args(argv)
    result = run_load(
        name=args.name,
        url=args.url,
        method=args.method,
        headers=dict(args.header),
        body=args.data.encode() if args.data is not None else None,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        prefer=args.prefer,
    )
    extra = {
        "statuses": [" ".join(f"{k}:{v}" for k, v in result.status_counts.items()) or "-"],
        "socket errs": [" ".join(f"{k}:{v}" for k, v in result.socket_errors.items() if v) or "-"],
    }
    if result.rate is not None:
        extra["dropped"] = [str(result.dropped)]
        if result.tool == "wrk":
            extra["late"] = [str(result.late)]
    print(format_table([result], extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
