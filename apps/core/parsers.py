"""A JSON parser that turns every kind of bad body into a 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from .errors import RequestTooLarge


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests deeper than `limit` (iterative: no recursion to blow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class SafeJSONParser(JSONParser):
    """Strict UTF-8 JSON with a size cap and a nesting cap.

    DRF reads the request stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE never
    applies: the cap is enforced here, by reading at most one byte past it.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        try:
            if declared and int(declared) > limit:
                raise RequestTooLarge()
        except ValueError:
            raise ParseError("Content-Length is not a number.") from None
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge()
        if not raw:
            return {}
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise ParseError("Body is not valid UTF-8.") from None
        except RecursionError:
            raise ParseError("JSON is nested too deeply.") from None
        except ValueError as exc:
            # Also covers integers longer than Python's int-conversion limit.
            raise ParseError(f"Malformed JSON: {exc}") from None
        if json_depth_exceeds(data, settings.API_MAX_JSON_DEPTH):
            raise ParseError("JSON is nested too deeply.")
        return data
