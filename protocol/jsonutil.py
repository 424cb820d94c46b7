"""JSON helpers: orjson on the fast path, the stdlib for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; falls back to the stdlib for integers beyond 64 bits (orjson refuses them)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # raises json.JSONDecodeError (a ValueError) when truly bad


def dumps(obj: Any) -> bytes:
    """Serialise compactly, keeping key order, non-ASCII text and big integers as they are."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
