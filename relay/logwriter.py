"""The relay's log written in batches (`relay.logs.configure`): a record is queued when it is
logged and formatted and written with the others of its batch at the event loop's next
flush, at most `FLUSH_S` later, in one `write` (docs/performance.md, "What the INFO log
costs").

A line made and written as it was logged cost the relay about three times what it costs
in a loop of lines: between two of them the relay runs everything else a round trip needs.
Queued, a `story` line costs the hot path a tuple (its fields are the dict the call made);
the batch is made in one loop, without a record per line (`relay.logs.renderer`), and
written at once: a line made in a batch costs the relay about one and a half times what
it costs in a loop.

Nothing is lost on a clean exit: a WARNING or worse writes the batch at once with the
lines before it, a line logged outside the event loop's thread is written at once, and
`logging.shutdown` (at exit, after SIGTERM's drain too) writes what is queued. A crash
(SIGKILL, a fatal signal) loses at most the last `FLUSH_S` of INFO lines."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import IO, Any

FLUSH_S = 0.1  # how long a line may wait in the event loop's thread
BATCH_LINES = 1024  # written at once when this many are queued
# A line `story` queued: (created, logger name, level, event, fields).
Queued = tuple[float, str, int, str, dict[str, Any]]
Render = Callable[[Queued], str]  # a queued line as it is written
_running_loop = asyncio._get_running_loop  # the loop of this thread, or None (no raise)


class BatchWriter(logging.Handler):
    """A handler that writes its records to `stream` in batches: see the module's text.
    Its formatter formats the records; `render` makes the line of a queued `story` line
    (in the formatter's format) at flush time."""

    def __init__(self, stream: IO[str], render: Render) -> None:
        super().__init__()
        self.stream = stream
        self._render = render
        self._queue: deque[logging.LogRecord | Queued] = deque()  # append/popleft: any thread
        self._armed: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def emit(self, record: logging.LogRecord) -> None:
        """Queue `record` (any logger's), its message rendered now: its arguments may change
        before the flush."""
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        self._queue.append(record)
        self._due(record.levelno)

    def queue(self, line: Queued) -> None:
        """Queue a line of `relay.logs.story`: its line is made at flush time."""
        queue = self._queue
        queue.append(line)
        loop = _running_loop()
        # The common case tested at once: an INFO line in the loop a flush is due on.
        if loop is None or loop is not self._armed or line[2] >= logging.WARNING:
            self._due(line[2])
        elif len(queue) >= BATCH_LINES:
            self.flush()

    def _due(self, level: int) -> None:
        if level >= logging.WARNING or len(self._queue) >= BATCH_LINES:
            self.flush()
            return
        loop = _running_loop()
        if loop is None:  # another thread, or no loop (start-up, exit): no flush would come
            self.flush()
        elif loop is not self._armed:
            self._armed = loop
            loop.call_later(FLUSH_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._armed is loop:
            self._armed = None
        self.flush()

    def flush(self) -> None:
        """Format every queued record, in order, and write them in one `write`."""
        self.acquire()
        try:
            self._write_queued()
        finally:
            self.release()

    def close(self) -> None:
        """Write what is queued, then close (`logging.basicConfig(force=True)` closes the
        handlers it replaces without a flush)."""
        self.flush()
        super().close()

    def _write_queued(self) -> None:
        queue = self._queue
        lines = []
        last: logging.LogRecord | Queued | None = None
        for _ in range(len(queue)):
            last = entry = queue.popleft()
            try:
                if isinstance(entry, tuple):
                    lines.append(self._render(entry))
                else:
                    lines.append(self.format(entry))
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit
                self.handleError(_record(entry))
        if last is None:
            return
        try:
            if lines:
                self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit
            self.handleError(_record(last))


def _record(entry: logging.LogRecord | Queued) -> logging.LogRecord:
    """A record to report a failure with (`Handler.handleError`)."""
    if isinstance(entry, tuple):
        created, name, level, event, fields = entry
        attrs = {"name": name, "levelno": level, "levelname": logging.getLevelName(level)}
        return logging.makeLogRecord(attrs | {"msg": event, "created": created, **fields})
    return entry
