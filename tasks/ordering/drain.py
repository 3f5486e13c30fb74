"""`PendingSignal`: one drain of pending keys at a time, woken through Redis."""

from __future__ import annotations

from typing import Any


class PendingSignal:
    """Wakes one drain of keys with pending commands, without one message per command.

    Accepts call `notify()` after their commit; it returns True when the caller must
    publish a drain (none is on its way), else it asks the running drain for one more
    pass. The drain calls `begin_pass()` before each pass and, when a pass found nothing,
    `finish()`, which says whether to go again (someone notified since the pass began) or
    ends the drain (the next `notify()` returns True again). Both run as Redis scripts, so
    an accept's notify is seen either by a pass that begins after it (and therefore after
    its commit) or by `finish()`.

    The flag is a lease (`ttl_ms`, renewed by each pass): a drain that died holding it
    stops holding back new drains when it expires. Redis is a hint, never the truth: a
    notify lost with a crash or a Redis outage is the job of a sweeper that calls
    `notify()` while the database shows pending keys.
    """

    _NOTIFY = """
    if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
    return 0
    """
    _BEGIN = """
    redis.call('DEL', KEYS[2])
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
    return 1
    """
    _FINISH = """
    if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
    redis.call('DEL', KEYS[1])
    return 0
    """

    def __init__(self, name: str, *, ttl_ms: int = 10_000, client: Any = None) -> None:
        self.keys = [f"surge:ordering:{name}:drain", f"surge:ordering:{name}:again"]
        self.ttl_ms = ttl_ms
        self._client = client

    def _redis(self) -> Any:
        if self._client is not None:
            return self._client
        from apps.core.redis import get_redis

        return get_redis()

    def _run(self, script: str, *args: Any) -> int:
        client = self._redis()
        return int(client.eval(script, 2, *self.keys, *args))

    def notify(self) -> bool:
        return bool(self._run(self._NOTIFY, self.ttl_ms))

    def begin_pass(self) -> None:
        self._run(self._BEGIN, self.ttl_ms)

    def finish(self) -> bool:
        return bool(self._run(self._FINISH))
