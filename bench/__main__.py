"""`python -m bench [scenario]` (or `make bench BENCH_ARGS=...`): runs against the real
stack and prints Markdown tables; record them in bench/RESULTS.md with the command."""

from __future__ import annotations

import argparse
import platform
import time

from . import baseline, coupons, orders, saga, toolkit, wallets


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "scenario",
        nargs="?",
        default="baseline",
        choices=["baseline", "coupons", "orders", "saga", "toolkit", "wallets"],
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP row")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=500.0, help="offered requests/s (wallets)")
    parser.add_argument("--tasks", type=int, default=5000, help="messages per Celery row")
    parser.add_argument("--orders", type=int, default=1500, help="queued orders (saga)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.scenario == "orders":
        table = orders.run(duration=args.duration, rate=min(args.rate, 200.0))
    elif args.scenario == "wallets":
        table = wallets.run(duration=args.duration, rate=args.rate)
    elif args.scenario == "saga":
        table = saga.run(orders=args.orders)
    elif args.scenario == "toolkit":
        table = toolkit.run(tasks=args.tasks)
    elif args.scenario == "coupons":
        table = coupons.run(duration=args.duration, concurrency=args.concurrency)
    else:
        table = baseline.run(duration=args.duration, concurrency=args.concurrency, tasks=args.tasks)
    print(
        f"\n## {args.scenario} ({started}, {platform.node()}, Python {platform.python_version()})\n"
    )
    print(table)


if __name__ == "__main__":
    main()
