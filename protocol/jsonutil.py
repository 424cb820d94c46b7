"""JSON helpers: orjson on the fast path, the stdlib where exactness needs it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_DECODER = json.JSONDecoder()  # stateless; safe to share
# The stdlib's C string scanner: (text, index after the opening quote) -> (value, end).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


_WS = re.compile(r"[ \t\n\r]*")

MAX_DEPTH = 64
"""Arrays and objects nested deeper than this are refused: no peer needs more, and the
stdlib's recursive scanner (`members`, the big-number fallback) fails near 1,000 levels."""

# Depth is measured on the bracket skeleton of a document: its strings (whose brackets are
# text) and everything but brackets removed, `{}` written as `[]`.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(range(256)).translate(None, b"[]{}")


class TooDeep(ValueError):
    """JSON nested deeper than `MAX_DEPTH` levels."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


def _skip(text: str, idx: int) -> int:
    m = _WS.match(text, idx)
    return m.end() if m else idx


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (RFC 8259: UTF-8, no NaN/Infinity, no BOM) nested at most
    `MAX_DEPTH` levels; raise ValueError (`TooDeep` for the nesting).

    orjson reads integers beyond 64 bits as floats and refuses numbers beyond a double; the
    stdlib, in strict mode, parses what orjson refuses. Code that forwards JSON must forward
    its source text (`member_text`), never a re-serialisation.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode("utf-8") if isinstance(data, bytes) else data  # UnicodeDecodeError
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except RecursionError as exc:
            raise TooDeep from exc
        _check_depth(text)
        _reject_lone_surrogates(obj)  # the stdlib accepts "\ud800"; UTF-8 and orjson do not
        return obj
    _check_depth(data)
    return obj


def _check_depth(doc: bytes | str) -> None:
    """Raise `TooDeep` when valid JSON `doc` nests arrays and objects beyond `MAX_DEPTH`.

    Most documents hold fewer brackets than the limit, which two counts in C show. Others
    are cut to their bracket skeleton, from which each pass removes the innermost pairs: the
    passes needed are the depth, so at most `MAX_DEPTH` of them, each a C-speed replace."""
    if isinstance(doc, str):
        doc = doc.encode("utf-8", "surrogatepass")
    if doc.count(b"[") + doc.count(b"{") <= MAX_DEPTH:
        return
    skeleton = _STRING.sub(b"", doc).translate(_SQUARE, _NOT_BRACKET)
    for _level in range(MAX_DEPTH):
        skeleton = skeleton.replace(b"[]", b"")
        if not skeleton:
            return
    raise TooDeep


def _reject_lone_surrogates(obj: Any) -> None:
    """Raise UnicodeEncodeError (a ValueError) when a string or key holds a lone surrogate."""
    if isinstance(obj, str):
        obj.encode()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            key.encode()
            _reject_lone_surrogates(value)
    elif isinstance(obj, list):
        for value in obj:
            _reject_lone_surrogates(value)


def dumps(obj: Any) -> bytes:
    """Serialise compactly, keeping key order, non-ASCII text and big integers as they are."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def head_and_body(raw: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """Split a framed message: a JSON object on its first line (orjson never writes a raw
    newline), then bytes carried untouched; None for a first line that is not an object."""
    head, _, body = raw.partition(b"\n")
    try:
        h = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None, body
    return (h if isinstance(h, dict) else None), body


def member_text(text: str, key: str) -> str | None:
    """The exact source text of top-level member `key` of a JSON object (last one wins).

    Used to forward a device's payload byte for byte (docs/protocol.md §2.1): parsing
    and re-serialising would turn integers beyond 64 bits into floats. `text` must already
    be known to be valid JSON; None when it is not an object or has no such member.
    """
    return members(text).get(key)


def members(text: str) -> dict[str, str]:
    """Every top-level member of a JSON object: name -> the value's exact source text, in
    order, the last of repeated names winning as in a parse; empty when `text` is not an
    object. `text` must already be known to be valid JSON."""
    found: dict[str, str] = {}
    idx = _skip(text, 0)
    if text[idx : idx + 1] != "{":
        return found
    idx = _skip(text, idx + 1)
    while text[idx : idx + 1] == '"':
        name, idx = _scanstring(text, idx + 1)
        idx = _skip(text, idx) + 1  # past ':'
        idx = _skip(text, idx)
        _value, end = _DECODER.raw_decode(text, idx)
        found[name] = text[idx:end]
        idx = _skip(text, end)
        if text[idx : idx + 1] != ",":
            break
        idx = _skip(text, idx + 1)
    return found
