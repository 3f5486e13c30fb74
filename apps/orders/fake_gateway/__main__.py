"""`python -m apps.orders.fake_gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from .asgi import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Surge's fake payment gateway (dev and tests).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("FAKE_GATEWAY_PORT") or 8010)
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=float(os.environ.get("FAKE_GATEWAY_DELAY_MS") or 200),
        help="how late tok_slow answers (default: FAKE_GATEWAY_DELAY_MS or 200)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    config = uvicorn.Config(
        create_app(delay_s=args.delay_ms / 1000),
        host=args.host,
        port=args.port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Requests held by tok_timeout must not hold up a stop.
        timeout_graceful_shutdown=1,
    )
    print(f"fake payment gateway on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
