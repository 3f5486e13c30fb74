"""A real SMTP server (aiosmtpd) in the test process, scriptable per recipient, that logs
every RCPT answer and every accepted message in arrival order."""

from __future__ import annotations

import asyncio
import email
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.harness import free_port


@dataclass(frozen=True, slots=True)
class Arrival:
    """One accepted message, per recipient, in the order the server accepted them."""

    to: str
    message_id: str
    subject: str
    headers: dict[str, str]


@dataclass
class SmtpSink:
    """What the server does and what it saw. `refuse_once[address]` answers the first RCPT
    of that address with the given reply; `refuse[address]` answers every RCPT with it;
    `data_delay_s` holds each DATA that long (a slow server, to have a backlog)."""

    port: int
    refuse_once: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    data_delay_s: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    # (address, the reply code) of every RCPT the server refused.
    refusals: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.refuse_once.clear()
            self.refuse.clear()
            self.data_delay_s = 0.0
            self.arrivals.clear()
            self.refusals.clear()

    def received_by(self, address: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.to == address]

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    # --- aiosmtpd handler hooks -------------------------------------------------------

    async def handle_RCPT(  # noqa: N802 - the name aiosmtpd calls
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self.lock:
            reply = self.refuse_once.pop(address, None) or self.refuse.get(address)
            if reply:
                self.refusals.append((address, int(reply[:3])))
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - the name aiosmtpd calls
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        parsed = email.message_from_bytes(envelope.original_content or envelope.content)
        headers = {k: str(v) for k, v in parsed.items()}
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.arrivals.append(
                    Arrival(
                        to=rcpt,
                        message_id=str(parsed["Message-ID"]),
                        subject=str(parsed["Subject"]),
                        headers=headers,
                    )
                )
        return "250 OK"


@pytest.fixture(scope="session")
def _smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp_sink(_smtp_server: SmtpSink, settings: Any) -> SmtpSink:
    """The session's SMTP server, with nothing scripted or seen; this process sends to it."""
    _smtp_server.reset()
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = _smtp_server.port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_TIMEOUT = 2.0
    return _smtp_server
