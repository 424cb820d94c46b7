"""Log lines a peer cannot forge: whatever a peer chose (a device id, a header, an error text
from a provider) is escaped before it reaches a log line, so a newline in a `device-id`
query parameter cannot start a line of its own."""

from __future__ import annotations

import logging
import time

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """`value` as text fit for one log line: control characters and the other characters
    Python does not print (line and paragraph separators, NEL, …) written as escapes.
    Printable text, non-ASCII letters included, is left as it is, so escaping twice changes
    nothing."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if (known := _ESCAPES.get(ch)) is not None:
        return known
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class SecondStamp(logging.Formatter):
    """`formatTime` as the stdlib writes it by default (`2026-12-04 18:14:32,312`), the date
    and time part built once a second instead of once a record: `strftime` and `localtime`
    were a tenth of a log line's cost."""

    _stamp: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self._date_time(record.created), record.msecs)

    def stamp(self, created: float) -> str:
        """What `formatTime` writes for a record made at `created` (the stdlib's `msecs`),
        without the record (relay/logs.py, a queued line)."""
        return f"{self._date_time(created)},{int((created - int(created)) * 1000):03d}"

    def _date_time(self, created: float) -> str:
        second = int(created)
        stamp = self._stamp
        if stamp[0] != second:  # one tuple, replaced whole: safe from another thread
            stamp = self._stamp = (
                second,
                time.strftime(self.default_time_format, self.converter(created)),
            )
        return stamp[1]


class OneLineFormatter(SecondStamp):
    """Each record starts one line and owns the lines below it: its message is escaped with
    `printable` (whatever a call site forgot, and what libraries log), and a traceback or
    stack that follows is indented, so a line starting at the margin is always a new record
    even when an exception's text holds a newline."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = printable(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        # Not cached in record.exc_text: another handler's formatter may indent differently.
        blocks = [self.formatException(record.exc_info)] if record.exc_info else []
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        return "\n".join([line, *map(_indented, blocks)])


def _indented(block: str) -> str:
    return "\n".join("  " + printable(part) for part in block.split("\n"))
