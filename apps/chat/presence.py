"""Who has a socket open to a room, as far as Redis knows: one hash per room of user id ->
open sockets. The offline-notification pass skips members counted here.

A socket counts itself before it joins the room's group and uncounts after it leaves it,
so a member who can receive a message live is never counted offline for it. A ws process
that dies leaves its counts behind (its users look online until they reconnect and leave
again); the cost is a missed push, which the room list's `unread` still shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from apps.core.redis import get_redis


def _key(room_id: int) -> str:
    return f"surge:chat:online:{room_id}"


def presence_join(room_id: int, user_id: int) -> None:
    get_redis().hincrby(_key(room_id), str(user_id), 1)


def presence_leave(room_id: int, user_id: int) -> None:
    client = get_redis()
    if client.hincrby(_key(room_id), str(user_id), -1) <= 0:
        client.hdel(_key(room_id), str(user_id))


def online_among(room_id: int, user_ids: Iterable[int]) -> set[int]:
    """The subset of `user_ids` with a socket open to the room. Raises what Redis raises
    (the task retries): guessing either way would push to the connected or skip the
    offline."""
    ids = list(dict.fromkeys(int(u) for u in user_ids))
    if not ids:
        return set()
    counts = get_redis().hmget(_key(room_id), [str(u) for u in ids])
    return {u for u, count in zip(ids, counts, strict=True) if count and int(count) > 0}
