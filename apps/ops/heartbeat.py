"""Worker liveness for `/readyz`: every Celery worker beats into Redis, and beats expire.

Why a heartbeat, not a `control.ping` per request: a ping is one broadcast over Redis
pub/sub with a fixed wait, so one lost or late reply (a consumer still reconnecting after a
Redis restart, a reply that missed the window) read as "no worker", and every `/readyz`
waited out the whole timeout. A beat is written by each worker on its own schedule and read
with one script call: a late beat costs nothing until `WORKER_HEARTBEAT_TTL_S` passes
without one, and a read takes a millisecond, so `/readyz` can be polled every second.

Why a consumer bootstep on the worker's timer, not a thread of its own: the beat runs in the
event loop that takes messages off the queues, so a beat says that loop turns. Celery
cancels the timer entries a consumer registered when its broker connection fails and starts
its steps again once it reconnected, so a worker that cannot consume stops beating (and
reads as gone once its last beat expires), and beats at once when it consumes again. A
thread would go on beating for a consumer that is stuck.

Where: one sorted set (hostname -> when its last beat expires, in Redis's own clock, so the
hosts' clocks never matter) and one hash (hostname -> the queues it consumes), under one
hash tag so that both scripts touch one Redis Cluster slot. A graceful stop removes the
worker's entry at once; a killed worker's entry expires. A Redis that restarts empty is
refilled by the next beat of every worker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery import bootsteps
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from apps.core.redis import get_redis

logger = logging.getLogger(__name__)

EXPIRIES_KEY = "{surge:workers}:expires"
QUEUES_KEY = "{surge:workers}:queues"
KEYS = [EXPIRIES_KEY, QUEUES_KEY]

# TIME inside the script: both the expiry and the comparison use the server's clock.
_BEAT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# Forgets expired workers and returns the live ones with their queues, in one atomic step:
# a beat lands either before (and is seen) or after (and re-adds the worker) a read.
_LIVE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('HDEL', KEYS[2], unpack(dead))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if #live == 0 then
  return {}
end
local queues = redis.call('HMGET', KEYS[2], unpack(live))
local out = {}
for i, hostname in ipairs(live) do
  out[#out + 1] = hostname
  out[#out + 1] = queues[i] or '[]'
end
return out
"""


def heartbeat_beat(*, client: redis.Redis, hostname: str, queues: list[str], ttl_s: float) -> None:
    """Records that `hostname` consumes `queues`, for the next `ttl_s` seconds."""
    client.eval(_BEAT, len(KEYS), *KEYS, hostname, json.dumps(sorted(queues)), ttl_s)


def heartbeat_forget(*, client: redis.Redis, hostname: str) -> None:
    """A worker that stops says so, rather than read as live until its beat expires."""
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(EXPIRIES_KEY, hostname)
        pipe.hdel(QUEUES_KEY, hostname)
        pipe.execute()


def heartbeat_live_workers() -> dict[str, list[str]]:
    """Live workers by hostname, each with the queues it consumes. Raises RedisError when
    Redis does not answer: then nobody knows."""
    reply = get_redis().eval(_LIVE, len(KEYS), *KEYS)
    pairs = iter(reply)
    return {
        _text(hostname): [str(queue) for queue in json.loads(_text(queues))]
        for hostname, queues in zip(pairs, pairs, strict=True)
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Beats every `WORKER_HEARTBEAT_INTERVAL_S` while the consumer runs (see the module
    docstring for why a consumer step). After Tasks: the queues it reports are the ones its
    task consumer really listens to, also after `add_consumer`/`cancel_consumer`."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "Heartbeat"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None
        self._client: redis.Redis | None = None
        self._failing = False

    def start(self, c: Any) -> None:
        self._beat(c)  # before the worker says "ready": /readyz counts it from then on
        self._entry = c.timer.call_repeatedly(
            float(settings.WORKER_HEARTBEAT_INTERVAL_S), self._beat, (c,)
        )

    def stop(self, c: Any) -> None:
        """The consumer stops, to reconnect or for good: no more beats from it."""
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop

    def close(self, c: Any) -> None:
        """Called only when the worker itself stops: it consumes nothing from now on, even
        while it finishes the tasks it holds, so it leaves at once."""
        self.stop(c)
        try:
            heartbeat_forget(client=self._redis(), hostname=c.hostname)
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not remove the heartbeat of %s: %s", c.hostname, exc)

    def _beat(self, c: Any) -> None:
        consumer = getattr(c, "task_consumer", None)
        queues = [queue.name for queue in consumer.queues] if consumer is not None else []
        try:
            heartbeat_beat(
                client=self._redis(),
                hostname=c.hostname,
                queues=queues,
                ttl_s=float(settings.WORKER_HEARTBEAT_TTL_S),
            )
        except Exception as exc:  # noqa: BLE001 - a failed beat must never stop the consumer
            if not self._failing:  # one line per outage, not one per beat
                logger.warning("worker heartbeat not written (retrying every beat): %s", exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("worker heartbeat written again")
            self._failing = False

    def _redis(self) -> redis.Redis:
        """A client of the step's own: the beat runs in the worker's event loop, so a Redis
        that does not answer may hold it half a second at most, and is not retried there
        (the next beat is the retry)."""
        if self._client is None:
            self._client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=0.5,
                socket_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client


def install(app: Any) -> None:
    """Adds the step to `app`'s workers; runs from `OpsConfig.ready()`, which a worker runs
    (Celery's Django fixup sets Django up) before it builds its consumer."""
    if WorkerHeartbeat not in app.steps["consumer"]:
        app.steps["consumer"].add(WorkerHeartbeat)
