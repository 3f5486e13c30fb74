"""The development SMTP sink: accepts every message, prints one line for it, and keeps the
last `KEPT` in Redis for the staff page `/emails/dev/caught/`, so a newcomer running
`make run` without `EMAIL_HOST` sees mail arrive. Never a production relay: it delivers
nothing."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

from apps.core.redis import get_redis

KEY = "emails:devsink:caught"
KEPT = 200


def caught_store(*, envelope_from: str, recipients: list[str], content: bytes) -> dict[str, Any]:
    """Keep one caught message (newest first, the last KEPT); returns what was kept."""
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    body = parsed.get_body(preferencelist=("plain", "html"))
    caught = {
        "from": envelope_from,
        "to": recipients,
        "subject": str(parsed.get("Subject", "")),
        "message_id": str(parsed.get("Message-ID", "")),
        "date": str(parsed.get("Date", "")),
        "text": body.get_content() if body is not None else "",
    }
    client = get_redis()
    pipe = client.pipeline()
    pipe.lpush(KEY, json.dumps(caught))
    pipe.ltrim(KEY, 0, KEPT - 1)
    pipe.execute()
    return caught


def caught_list() -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in get_redis().lrange(KEY, 0, KEPT - 1)]
