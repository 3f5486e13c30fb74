"""Who has a notifications socket open, as far as Redis knows: a hash of user id -> open
sockets, so a batch's live events go only to users someone is listening for.

Approximate on purpose: a ws process that dies leaves its counts behind, which costs only
needless group_sends (the same as not knowing); a count is never the reason an event is
skipped for a listening user, because a socket counts itself before it joins its group.
On any Redis error everyone counts as online.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from apps.core.redis import get_redis

logger = logging.getLogger(__name__)

ONLINE_KEY = "surge:notifications:online"


def presence_join(user_id: int) -> None:
    get_redis().hincrby(ONLINE_KEY, str(user_id), 1)


def presence_leave(user_id: int) -> None:
    client = get_redis()
    if client.hincrby(ONLINE_KEY, str(user_id), -1) <= 0:
        client.hdel(ONLINE_KEY, str(user_id))


def online_among(user_ids: Iterable[int]) -> set[int]:
    """The subset of `user_ids` with a socket open (all of them if Redis cannot say)."""
    ids = list(dict.fromkeys(int(u) for u in user_ids))
    if not ids:
        return set()
    try:
        counts = get_redis().hmget(ONLINE_KEY, [str(u) for u in ids])
    except Exception:
        logger.warning("presence unknown; sending to every user", exc_info=True)
        return set(ids)
    return {u for u, count in zip(ids, counts, strict=True) if count and int(count) > 0}
