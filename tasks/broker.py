"""The Celery broker transport: kombu's Redis transport, minus one client object per write.

kombu's Redis channel builds a new `redis.Redis` object for every write it makes outside its
consumer connection: each message it publishes, each ack, each task event a worker sends
(three per task). The client object is only a front to the channel's connection pool, but
redis-py's constructor copies its table of ~170 response callbacks into a case-insensitive
dict, which costs more CPU than the write itself (measured here: 146 µs to build the
client, 106 µs for a PUBLISH; a worker pays it four to five times per task).

This channel builds that client once per connection pool and hands the same one out, and
keeps a worker alive through a lost connection with a message unacked (`_connparams`).
A `redis.Redis` object over a pool is safe to share between threads (every command checks
a connection out of the pool and back in; pipelines are separate objects), which the saga
worker's threads pool relies on. When kombu drops its pools (after a fork, on close) the
client goes with them: it is rebuilt for the next pool.

Selected by `broker_transport` in `config/celery.py`; the broker URL stays `redis://`.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    _shared_client: tuple[Any, Any] | None = None  # (pool, client built over it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The consumer's BRPOP client: kombu caches it itself (`Channel.client`).
            return super()._create_client(asynchronous=True)
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared[0] is not pool:
            shared = (pool, super()._create_client())
            self._shared_client = shared
        return shared[1]

    def _disconnect_pools(self) -> None:
        self._shared_client = None
        super()._disconnect_pools()

    def _connparams(self, asynchronous: bool = False) -> Any:
        # A worker that loses its broker connection closes it twice (Celery 5.7): first in
        # collect(), which detaches the transport, then again, and the second close
        # restores unacked messages through a pool rebuilt from the detached transport:
        # an AttributeError nothing catches, and the worker exited. A connection error is
        # what both closes ignore; the messages wait in Redis's unacked set for the restore.
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
