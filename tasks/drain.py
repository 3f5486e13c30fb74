"""The drain: work recorded as pending rows, done by one chain of passes per key.

When to use it rather than the outbox: the outbox is a row per message, right for work
that is one task per write (an order's saga, a replayed dead letter). A hot path that
accepts thousands of small writes a second wants the opposite: its accepted row (a coupon
request, a wallet transaction) is itself the durable record of the work, and one task
takes them in batches. That is a drain:

- A **pending row is the work.** PostgreSQL is the truth; nothing in Redis or the broker
  needs to survive for the work to be done.
- A **wake after the commit** (`Drain.wake`) starts the key's chain if none runs, else asks
  the running chain for another pass; so a busy key costs a few tasks a second, not one per
  row. A key is a campaign, a wallet, or the drain's one global key (`keyed=False`).
- A hot path that already runs a Redis script may take the wake inside it (one round trip):
  `wake_lua` writes the same step into the script, over `flag_key`/`again_key` with
  `lease_ms`; when the script reports that it took the flag, `Drain.start` publishes the
  chain after the commit. A wake taken this way happens before the work commits, so
  such a drain is made with `wakes_before_commit=True` (see `run`).
- The **loop lives here** (`Drain.run`): a thin task calls it with its app's batch function.
- A **beat sweep** (`Drain.sweep`, `Drain.wake_now`) wakes every key the database shows
  pending: a wake lost with a crash or a Redis outage delays the work, never loses it.

The protocol, per key, in two Redis keys that share the key's hash tag:
`<name>:{<key>}:drain` (the flag: a chain runs or is queued) and `<name>:{<key>}:again`
(someone woke the key since the running pass began). A wake sets the flag if missing
(the waker publishes the chain) or else sets `again`. A pass begins by clearing `again`
and renewing the flag; a pass that found nothing ends the chain only if `again` is still
clear (else it goes again), deleting the flag in the same script. So a wake that follows
its commit is seen by a pass that begins after it, or makes the chain go again, or finds
the flag gone and starts a new chain: none is missed. The flag is a lease (`lease_ms`,
renewed by each pass): a chain whose worker died stops holding back new ones once it
lapses, and the sweep starts one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from django.db import transaction
from redis.commands.core import Script

from apps.core.redis import get_redis
from config.celery import app as celery_app

__all__ = ["Drain", "drain_keys", "wake_lua"]

logger = logging.getLogger(__name__)

# The key of a drain made with `keyed=False`, in its Redis keys' names.
GLOBAL_KEY = "all"


def drain_keys(name: str, key: int | str) -> tuple[str, str]:
    """The flag and the ask-again key of `name`'s drain of `key`, in `key`'s hash tag: a
    script that also touches the app's own `<name>:{<key>}:...` keys stays in one slot."""
    tag = f"{name}:{{{key}}}"
    return f"{tag}:drain", f"{tag}:again"


def wake_lua(*, flag: str, again: str, lease: str, into: str) -> str:
    """The wake step for a Lua script: sets the local `into` to 1 when it took the flag
    (the caller must then publish the chain: `Drain.start`), else 0 (it asked the running
    chain for another pass). `flag`, `again` and `lease` are Lua expressions (`KEYS[5]`,
    `ARGV[5]`). The one definition of the wake, also used by `Drain.wake`."""
    return (
        f"local {into} = 0\n"
        f"if redis.call('SET', {flag}, '1', 'NX', 'PX', {lease}) then {into} = 1\n"
        f"else redis.call('SET', {again}, '1', 'PX', {lease}) end\n"
    )


_WAKE = wake_lua(flag="KEYS[1]", again="KEYS[2]", lease="ARGV[1]", into="took") + "return took"
_BEGIN_PASS = """
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""
_FINISH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
redis.call('DEL', KEYS[1])
return 0
"""

Number = int | float


def _at_call_time(value: Number | Callable[[], Number]) -> Callable[[], float]:
    """A knob given as a number or as a function reading settings when the drain runs."""
    if callable(value):
        return lambda: float(value())
    return lambda: float(value)


class Drain:
    """One drain: its task, its knobs, and the wake/pass/finish protocol of its keys.

    `task` is the Celery task name the chain runs as (published to `queue`, or routed as
    usual when None); the task calls `run` with one key (`keyed=True`: the key is its one
    argument) or none (`keyed=False`: one global key, no arguments). Knobs may be numbers
    or functions (read at call time, so settings overrides reach them):

    - `lease_ms`: how long the flag lasts without a pass renewing it; longer than the
      longest pass plus the time a queued message waits.
    - `pass_interval_s`: the shortest time between two passes' starts while there is work.
    - `budget_s`: how long one message runs passes before it hands over to a fresh one.
      0: each pass is its own message (a worker is never held between passes); else the
      passes loop inside one message, pausing in between.
    - `batch_size`: a pass that did this many goes again at once (the rest is waiting).
    - `wakes_before_commit`: some wakes are taken before their work commits (inside a
      hot-path Redis script). Such a wake may find the flag standing while the chain's
      last pass looks, then commit after the look; so a chain that ends looks once more.
    """

    def __init__(
        self,
        name: str,
        *,
        task: str,
        queue: str | None = None,
        keyed: bool = True,
        lease_ms: Number | Callable[[], Number] = 10_000,
        pass_interval_s: Number | Callable[[], Number] = 0.0,
        budget_s: Number | Callable[[], Number] = 0.0,
        batch_size: int | None = None,
        wakes_before_commit: bool = False,
    ) -> None:
        self.name = name
        self.task = task
        self.queue = queue
        self.keyed = keyed
        self._lease_ms = _at_call_time(lease_ms)
        self._pass_interval_s = _at_call_time(pass_interval_s)
        self._budget_s = _at_call_time(budget_s)
        self.batch_size = batch_size
        self.wakes_before_commit = wakes_before_commit
        self._scripts: dict[str, Script] = {}

    def __repr__(self) -> str:
        return f"Drain({self.name!r}, task={self.task!r})"

    # --- Keys and knobs ---------------------------------------------------------------

    def lease_ms(self) -> int:
        return int(self._lease_ms())

    def redis_keys(self, key: int | None = None) -> tuple[str, str]:
        """(flag, again) of `key`; of the global key when the drain is not keyed."""
        if self.keyed != (key is not None):
            raise TypeError(f"{self!r} is {'' if self.keyed else 'not '}keyed; key={key!r}")
        return drain_keys(self.name, GLOBAL_KEY if key is None else key)

    def flag_key(self, key: int | None = None) -> str:
        return self.redis_keys(key)[0]

    def again_key(self, key: int | None = None) -> str:
        return self.redis_keys(key)[1]

    def clear(self, key: int | None = None) -> None:
        """Forget the key's flag and ask-again (tests, benchmarks: no stale lease)."""
        get_redis().delete(*self.redis_keys(key))

    # --- The protocol (each step one Redis script) --------------------------------------

    def _run_script(self, source: str, key: int | None, *args: Any) -> int:
        client = get_redis()
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return int(script(keys=list(self.redis_keys(key)), args=list(args), client=client))

    def notify(self, key: int | None = None) -> bool:
        """The wake itself: True when the caller took the flag and must publish the chain;
        False when a chain runs or is queued (it was asked for another pass)."""
        return bool(self._run_script(_WAKE, key, self.lease_ms()))

    def begin_pass(self, key: int | None = None) -> None:
        """Before a pass: what was woken until now, this pass sees; the lease is renewed."""
        self._run_script(_BEGIN_PASS, key, self.lease_ms())

    def finish(self, key: int | None = None) -> bool:
        """After a pass that found nothing: True when woken since it began (go again);
        else the chain ends and frees the flag (the next wake starts a new one)."""
        return bool(self._run_script(_FINISH, key))

    def publish(self, key: int | None = None, *, countdown: float = 0.0) -> None:
        """Send the chain's next message (the caller holds the flag)."""
        args = [] if key is None else [key]
        celery_app.send_task(
            self.task, args=args, queue=self.queue, countdown=countdown if countdown > 0 else None
        )

    # --- Waking -------------------------------------------------------------------------

    def wake(self, key: int | None = None) -> None:
        """After the current transaction commits (now, outside one): start the key's chain
        or ask it for another pass. Never raises, and does nothing if the transaction rolls
        back: the pending row is durable already and the sweep wakes what this misses."""
        self.redis_keys(key)  # a wrong key is the caller's bug: say so now
        transaction.on_commit(partial(self._quietly, self.wake_now, key))

    def start(self, key: int | None = None) -> None:
        """After the commit: publish the chain whose flag the caller's own script took
        (`wake_lua`). Never raises: the flag's lease lapses and the sweep restarts it."""
        self.redis_keys(key)
        transaction.on_commit(partial(self._quietly, self.publish, key))

    def _quietly(self, step: Callable[[int | None], Any], key: int | None) -> None:
        try:
            step(key)
        except Exception:
            logger.warning(
                "drain %s: wake of %s failed; the sweep will wake it", self.name, key, exc_info=True
            )

    def wake_now(self, key: int | None = None) -> bool:
        """Wake the key now (a sweep: no transaction to wait for); True if it published.
        Raises what Redis or the broker raise (a sweep task retries)."""
        if self.notify(key):
            self.publish(key)
            return True
        return False

    def sweep(self, keys: Iterable[int]) -> int:
        """Beat: wake each key the database shows pending; returns how many chains it
        started (keys whose chain runs were only asked for another pass)."""
        return sum(self.wake_now(key) for key in keys)

    # --- The loop -----------------------------------------------------------------------

    def run(
        self, key: int | None = None, *, work: Callable[[], int], budget_s: float | None = None
    ) -> int:
        """One message of the key's chain: passes of `work` (one bounded batch, returns
        how many rows it did) while it finds work or was woken, then the chain ends.
        Returns how many rows its passes did.

        A pass that did a full `batch_size` goes again at once; others begin
        `pass_interval_s` after the previous one began. Past the budget the message hands
        over: it publishes the next one (still holding the flag, so no wake publishes
        meanwhile) and returns. An exception from `work` leaves the flag to lapse; the
        task's retry, or the sweep after the lease, carries on.
        """
        budget = self._budget_s() if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        total = 0
        while True:
            began = time.monotonic()
            self.begin_pass(key)
            done = work()
            total += done
            if not done and not self.finish(key):
                if not self.wakes_before_commit:
                    return total
                # The chain has ended; a wake taken before its commit may have seen the
                # flag still standing. Look once more: what is there restarts the chain.
                late = work()
                total += late
                if not late or not self.notify(key):
                    return total
                done = late
            full = self.batch_size is not None and done >= self.batch_size
            pause = 0.0 if full else self._pass_interval_s() - (time.monotonic() - began)
            if time.monotonic() >= deadline:
                self.publish(key, countdown=pause)
                return total
            if pause > 0:
                time.sleep(pause)
