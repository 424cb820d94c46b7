"""Incremental, linear Server-Sent Events decoder (WHATWG rules; docs/protocol.md §2.2).

Feed bytes as they arrive in any chunking; the same bytes always yield the same events.
Each byte is examined a bounded number of times, so a stream costs O(length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; `oversized` marks an event dropped for exceeding the size cap."""

    data: str
    event: str = "message"
    id: str | None = None
    oversized: bool = False


class SSEDecoder:
    """Turns a byte stream into `SSEEvent`s; pure, no I/O."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._line: list[bytes] = []  # pieces of the current, unterminated line
        self._line_len = 0
        self._skip_lf = False  # last piece ended in a lone CR; a leading LF belongs to it
        self._started = False  # BOM check done
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._last_id: str | None = None
        self._oversized = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume a chunk and return the events it completes."""
        out: list[SSEEvent] = []
        pos = 0
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                pos = 1
        n = len(chunk)
        while pos < n:
            m = _EOL.search(chunk, pos)
            if m is None:
                self._append(chunk[pos:])
                break
            self._append(chunk[pos : m.start()])
            self._end_line(out)
            pos = m.end()
            if pos == n and chunk[m.start() : pos] == b"\r":
                self._skip_lf = True
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: flush a final line and a final event.

        WHATWG discards an event not followed by a blank line; a business service that
        forgets the last blank line would then lose its last answer, so we dispatch it.
        """
        out: list[SSEEvent] = []
        if self._line_len:
            self._end_line(out)
        self._dispatch(out)
        return out

    def _append(self, piece: bytes) -> None:
        if not piece:
            return
        self._line_len += len(piece)
        if self._oversized or self._line_len + self._data_len > self._max:
            self._oversized = True
            self._line = []
            return
        self._line.append(piece)

    def _end_line(self, out: list[SSEEvent]) -> None:
        empty = self._line_len == 0
        raw = b"".join(self._line)
        self._line, self._line_len = [], 0
        if not self._started:
            self._started = True
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
                empty = not raw
        if empty:
            self._dispatch(out)
        elif not self._oversized and raw[:1] != b":":
            self._field(raw)

    def _field(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._data_len += len(raw)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields are accepted and ignored (§2.2).

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._oversized:
            out.append(SSEEvent("", self._event or "message", self._last_id, oversized=True))
        elif self._data:
            out.append(SSEEvent("\n".join(self._data), self._event or "message", self._last_id))
        self._data, self._data_len, self._event, self._oversized = [], 0, "", False
