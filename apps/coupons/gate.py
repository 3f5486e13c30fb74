"""The Redis gate: one atomic script decides every issue request.

"Redis decides, PostgreSQL remembers, Celery finishes." The script checks the per-user
rate limit, the campaign window, whether the user was accepted already and the remaining
count, and records the acceptance (decrement + set membership) in the same step, so no two
requests can both take the last coupon and no reader ever acts on a stale count. The same
script takes the wake of the campaign's drain (`tasks.drain.wake_lua`), so an accepted
request costs one round trip. The campaign's keys and its drain's share the hash tag
`coupons:{<campaign>}`, but the rate-limit key is the user's across campaigns
(`coupons:rl:<user>:<window>`): the script needs all its keys on one Redis server, so it
does not run on Redis Cluster as it stands.

The gate is a cache of PostgreSQL: `services.gate_rebuild` writes it from the accepted
requests, with a new epoch, whenever it is missing (Redis restarted) or an operator asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.core.redis import get_redis
from tasks.drain import drain_keys, wake_lua

# The coupons drain (`services.DRAIN`): named so its keys share the campaign's hash tag.
DRAIN_NAME = "coupons"

_ACCEPT = (
    """
local count = redis.call('INCR', KEYS[4])
if count == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[4]) end
if count > tonumber(ARGV[3]) then return 'rate_limited::' .. redis.call('PTTL', KEYS[4]) end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'starts', 'ends')
if not meta[1] then return 'no_gate::0' end
local now = tonumber(ARGV[2])
if meta[2] ~= '' and now < tonumber(meta[2]) then return 'not_active:' .. meta[1] .. ':0' end
if meta[3] ~= '' and now >= tonumber(meta[3]) then return 'not_active:' .. meta[1] .. ':0' end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 'already:' .. meta[1] .. ':0' end
local left = tonumber(redis.call('GET', KEYS[2]) or '0')
if left <= 0 then return 'sold_out:' .. meta[1] .. ':0' end
redis.call('DECR', KEYS[2])
redis.call('SADD', KEYS[3], ARGV[1])
"""
    + wake_lua(flag="KEYS[5]", again="KEYS[6]", lease="ARGV[5]", into="drain")
    + """
return 'accepted:' .. meta[1] .. ':' .. drain
"""
)

# Undo an acceptance that PostgreSQL did not record, unless the gate was rebuilt since
# (then the rebuilt gate, written from PostgreSQL, already does not count it).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return 0 end
if redis.call('SREM', KEYS[3], ARGV[1]) == 1 then redis.call('INCR', KEYS[2]) end
return 1
"""


def _keys(campaign_id: int) -> tuple[str, str, str]:
    tag = f"coupons:{{{campaign_id}}}"
    return f"{tag}:meta", f"{tag}:remaining", f"{tag}:users"


@dataclass(frozen=True)
class Verdict:
    kind: str  # accepted | already | sold_out | not_active | no_gate | rate_limited
    epoch: str
    schedule_drain: bool = False
    retry_after_ms: int = 0


class Gate:
    def __init__(self) -> None:
        client = get_redis()
        self._accept = client.register_script(_ACCEPT)
        self._release = client.register_script(_RELEASE)

    def accept(
        self,
        *,
        campaign_id: int,
        user_id: int,
        now_ms: int,
        rate_limit: int,
        rate_window_ms: int,
        drain_lease_ms: int,
    ) -> Verdict:
        meta, remaining, users = _keys(campaign_id)
        window = now_ms // rate_window_ms
        rate_key = f"coupons:rl:{user_id}:{window}"
        reply = self._accept(
            keys=[meta, remaining, users, rate_key, *drain_keys(DRAIN_NAME, campaign_id)],
            args=[user_id, now_ms, rate_limit, rate_window_ms, drain_lease_ms],
        )
        # One "kind:epoch:extra" string (epochs are hex): one reply to parse, not an array.
        kind, epoch, extra = (reply.decode() if isinstance(reply, bytes) else reply).split(":")
        if kind == "rate_limited":
            return Verdict(kind, epoch, retry_after_ms=max(int(extra), 1))
        return Verdict(kind, epoch, schedule_drain=bool(int(extra)))

    def release(self, *, campaign_id: int, user_id: int, epoch: str) -> None:
        meta, remaining, users = _keys(campaign_id)
        self._release(keys=[meta, remaining, users], args=[user_id, epoch])


_gate: Gate | None = None
_gate_client: object | None = None


def gate() -> Gate:
    """The process's gate (scripts are registered per client; a new client after fork)."""
    global _gate, _gate_client
    client = get_redis()
    if _gate is None or _gate_client is not client:
        _gate, _gate_client = Gate(), client
    return _gate


def gate_write(
    *,
    campaign_id: int,
    epoch: str,
    total: int,
    user_ids: list[int],
    starts_ms: int | None,
    ends_ms: int | None,
) -> None:
    """Replace the campaign's gate in one MULTI/EXEC: readers see the old or the new."""
    meta, remaining, users = _keys(campaign_id)
    pipe = get_redis().pipeline(transaction=True)
    pipe.delete(meta, remaining, users)
    for start in range(0, len(user_ids), 5000):
        pipe.sadd(users, *user_ids[start : start + 5000])
    pipe.set(remaining, total - len(user_ids))
    pipe.hset(
        meta,
        mapping={
            "epoch": epoch,
            "starts": "" if starts_ms is None else str(starts_ms),
            "ends": "" if ends_ms is None else str(ends_ms),
        },
    )
    pipe.execute()


def gate_remaining(campaign_id: int) -> int | None:
    """What the gate says is left, or None when the gate is not loaded."""
    meta, remaining, _ = _keys(campaign_id)
    client = get_redis()
    if not client.exists(meta):
        return None
    value = client.get(remaining)
    return int(value) if value is not None else None


def gate_exists(campaign_id: int) -> bool:
    return bool(get_redis().exists(_keys(campaign_id)[0]))


def gate_delete(campaign_id: int) -> None:
    get_redis().delete(*_keys(campaign_id), *drain_keys(DRAIN_NAME, campaign_id))


def rebuild_lock(campaign_id: int, ttl_ms: int = 10_000) -> bool:
    return bool(get_redis().set(f"coupons:{{{campaign_id}}}:rebuilding", "1", nx=True, px=ttl_ms))


def rebuild_unlock(campaign_id: int) -> None:
    get_redis().delete(f"coupons:{{{campaign_id}}}:rebuilding")
