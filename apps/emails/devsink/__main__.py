"""`python -m apps.emails.devsink`: the development SMTP sink on EMAIL_HOST:EMAIL_PORT."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any


class _Handler:
    async def handle_DATA(  # noqa: N802 - the name aiosmtpd calls
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        from . import caught_store

        caught = caught_store(
            envelope_from=str(envelope.mail_from),
            recipients=list(envelope.rcpt_tos),
            content=envelope.original_content or envelope.content,
        )
        print(f"smtp sink: {caught['to']} {caught['subject']!r} {caught['message_id']}", flush=True)
        return "250 OK"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.conf import settings

    django.setup()
    parser = argparse.ArgumentParser(description="Surge's development SMTP sink.")
    parser.add_argument("--host", default=settings.EMAIL_HOST)
    parser.add_argument("--port", type=int, default=settings.EMAIL_PORT)
    args = parser.parse_args(argv)

    from aiosmtpd.controller import Controller

    controller = Controller(_Handler(), hostname=args.host, port=args.port)
    controller.start()
    print(f"smtp sink: listening on {args.host}:{args.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
