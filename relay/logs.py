"""The relay's story in its log: one INFO line per thing a device or a business does
(connect, refused handshake, turn, push, close), warnings that name the business at fault,
and the two output formats of `[log] format` (README.md, "Logs").

Every line is written by `story`: its fields go to the text line as `key=value` and to a
JSON line as members of the same names (`extra=`), each string escaped with `printable`
first, so what a peer chose cannot start a line of its own in either format."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from bridges.business import BusinessTarget, StreamStats
from protocol.errors import BusinessOutcome
from relay.config.schema import LogConfig
from relay.logsafe import OneLineFormatter, SecondStamp, printable
from relay.logwriter import BatchWriter, Queued, Render

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# JSON members besides a line's own fields, under stable names (README.md, "Logs").
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAME = {"asctime": "time", "levelname": "level", "name": "logger"}
_JSON_FIELDS = ["asctime", "levelname", "name", "message"]  # JSON_FORMAT's, in its order
WARN_EVERY_S = 60.0
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)

Field = str | int | float | None
log = logging.getLogger("relay.business")
_FAILED = (BusinessOutcome.UNREACHABLE, BusinessOutcome.STATUS, BusinessOutcome.CONTENT_TYPE)
# What `Logger.makeRecord` refuses in `extra=`: a field must not replace the record's own,
# nor a member of a JSON line (JSON_RENAME's names).
RESERVED = (
    frozenset(logging.makeLogRecord({}).__dict__)
    | {"message", "asctime"}
    | frozenset(JSON_RENAME.values())
)
# What the stdlib records when `logging._srcfile` is None (configure): no caller looked up.
_NO_FILE, _NO_FUNCTION = "(unknown file)", "(unknown function)"
_ROOT = logging.getLogger()
_writer: BatchWriter | None = None  # the relay's handler on the root logger, once configured
SESSION_HINT = "every event must carry the request's session_id (docs/protocol.md §2.3)"
INVALID_HINT = "each event's data must be one JSON object (docs/protocol.md §2.2)"


def story(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Field) -> None:
    """Log `event` with `fields`: `event key=value …` as text, the same names in JSON.

    The line costs the hot path (one per pass-through round trip): with the relay's own
    handler alone on the root logger (`configure`) it is queued as a tuple, and its line is
    made with the rest of its batch (relay/logwriter.py, `renderer`); else the text is built
    in one pass over the fields and the record handed to the logger's handlers directly: no
    `%` template, no argument mapping, no `extra=` merge (docs/performance.md, "What the
    INFO log costs")."""
    if not logger.isEnabledFor(level):
        return
    writer = _writer
    if writer is not None:
        handlers = _ROOT.handlers
        if len(handlers) == 1 and handlers[0] is writer:  # nobody else listens (caplog)
            writer.queue((time.time(), logger.name, level, event, fields))
            return
    # A queued line's names are checked once, where they are written (tests/relay/
    # test_logs.py reads every call of `story`): `RESERVED` here, where a record is made.
    if not RESERVED.isdisjoint(fields):
        raise KeyError(f"{event}: a field would overwrite the record's own attribute")
    record = logging.getLogRecordFactory()(
        logger.name, level, _NO_FILE, 0, message(event, fields), None, None, _NO_FUNCTION
    )
    record.__dict__.update(fields)  # the JSON members (what `extra=` would have set)
    logger.handle(record)


def message(event: str, fields: dict[str, Any]) -> str:
    """The text of a `story` line, `event key=value …`; a string field that does not print
    is replaced in `fields` by its escaped form (`printable`), for the JSON members too."""
    parts = [event]
    add = parts.append
    for key, value in fields.items():
        kind = type(value)
        if kind is int:
            add(f"{key}={value}")
        elif kind is str:
            if not value.isprintable():
                value = fields[key] = printable(value)
            if value and " " not in value and '"' not in value and "=" not in value:
                add(f"{key}={value}")
            else:
                add(f"{key}={_quoted(value)}")
        elif value is None:
            add(f"{key}=-")
        elif kind is float:
            add(f"{key}={value:.0f}")
        else:
            add(f"{key}={printable(value)}")
    return " ".join(parts)


def _quoted(value: str) -> str:
    """`value` in quotes (it is empty or holds a space, a quote or `=`)."""
    return '"' + value.replace('"', '\\"') + '"'  # already escaped by printable


def ms(seconds: float | None) -> int | None:
    """A duration for a log line: whole milliseconds."""
    return None if seconds is None else round(seconds * 1000)


def cut(text: str, limit: int) -> str | None:
    """`text` for a log line: at most `limit` characters (an ellipsis when longer); None
    when `limit` is 0 (the operator keeps what users say out of the log)."""
    if limit <= 0:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


def safe_url(url: str) -> str:
    """`url` without what may be a credential: its user and password, query and fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Every:
    """At most one report per key every `interval_s`: `due(key)` is None while quiet, else
    how many reports were held back since the last one. Keys come from the configuration
    (business names), a small fixed set."""

    def __init__(
        self, interval_s: float = WARN_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, key: str) -> int | None:
        """None when `key` was reported less than `interval_s` ago (counted), else the count."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


def warn_business(every: Every, target: BusinessTarget, expected: str, stats: StreamStats) -> None:
    """A WARNING, at most once a minute per business and mistake, for what the business did
    wrong in one answer: events for another session (or none) dropped, a failed request."""
    name = target.name
    if stats.foreign_dropped and (held := every.due(f"{name} session")) is not None:
        story(
            log,
            "business_session_mismatch",
            logging.WARNING,
            business=name,
            dropped=stats.foreign_dropped,
            expected=expected,
            got=(stats.foreign_session or "")[:80] or None,  # None: the event had none
            held_back=held,
            hint=SESSION_HINT,
        )
    outcome = stats.outcome
    if outcome in _FAILED and (held := every.due(f"{name} {outcome.value}")) is not None:
        story(
            log,
            "business_failed",
            logging.WARNING,
            business=name,
            url=safe_url(target.url),
            outcome=outcome.value,
            status=stats.status,
            content_type=stats.content_type,
            error=stats.error,
            held_back=held,
        )


def dropped_note(target: BusinessTarget, expected: str, stats: StreamStats) -> bytes | None:
    """The diagnostic a simulate stream ends with when the business answered but every
    event was dropped (docs/openapi.yaml, `Diagnostic`); None when some event got through."""
    if stats.events or not (stats.foreign_dropped or stats.bad_events):
        return None
    hint = SESSION_HINT if stats.foreign_dropped else INVALID_HINT
    return orjson.dumps(
        {
            "code": "events_dropped",
            "business": target.name,
            "dropped_session": stats.foreign_dropped,
            "dropped_invalid": stats.bad_events,
            "expected_session_id": expected,
            "got_session_id": (stats.foreign_session or "")[:80] or None,
            "hint": hint,
        }
    )


class JsonLines(SecondStamp, OrjsonFormatter):
    """python-json-logger's formatter on orjson (the relay's JSON library; UTF-8 as it is,
    about twice as fast as the stdlib encoder here), its time stamp built once a second."""

    def line(self, created: float, name: str, level: int, text: str, fields: dict[str, Any]) -> str:
        """What `format` writes for the record of a queued `story` line, made without the
        record: the members of `JSON_FORMAT` (time, level, logger, message, renamed as
        python-json-logger renames them), then the line's fields, which `story` keeps clear
        of the record's own names, serialised by python-json-logger
        (`serialize_log_record`). `format` finds the same members among a record's
        twenty-odd attributes, which was half of a JSON line's cost."""
        time_, level_, logger_, message_ = self._members
        log_data = {
            time_: self.stamp(created),
            level_: logging.getLevelName(level),
            logger_: name,
            message_: text,
            **fields,
        }
        return self.serialize_log_record(self.process_log_record(log_data))

    def plain(self) -> bool:
        """Whether `line` writes what `format` would: the fields of `JSON_FORMAT`, and none
        of python-json-logger's options that add members."""
        extras = self.defaults or self.static_fields or self.timestamp
        return self._required_fields == _JSON_FIELDS and not extras

    @functools.cached_property
    def _members(self) -> tuple[str, ...]:
        """The member names of `JSON_FORMAT`'s fields (`rename_fields`)."""
        return tuple(self._get_rename(field) for field in _JSON_FIELDS)


def renderer(fmt: logging.Formatter) -> Render:
    """How a line `story` queued is written with `fmt` (a `formatter`), without a record:
    as `JsonLines.format` or `OneLineFormatter.format` (`TEXT_FORMAT`) would write it."""
    if isinstance(fmt, JsonLines) and fmt.plain():
        json_line = fmt.line

        def queued_json(entry: Queued) -> str:
            created, name, level, event, fields = entry
            return json_line(created, name, level, message(event, fields), fields)

        return queued_json
    if not isinstance(fmt, OneLineFormatter) or fmt._fmt != TEXT_FORMAT:
        raise ValueError("a queued line is written in a format of `formatter` only")
    stamp = fmt.stamp
    level_names = {level: logging.getLevelName(level) for level in _LEVELS}

    def queued_text(entry: Queued) -> str:
        # `message` escapes every field; the event and the names are the relay's own words.
        created, name, level, event, fields = entry
        level_name = level_names.get(level) or logging.getLevelName(level)
        return f"{stamp(created)} {level_name} {name}: {message(event, fields)}"

    return queued_text


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of `[log] format`: `text` (one escaped line) or `json` (one object)."""
    if fmt == "json":
        return JsonLines(JSON_FORMAT, rename_fields=JSON_RENAME)
    return OneLineFormatter(TEXT_FORMAT)


def configure(cfg: LogConfig) -> None:
    """Route every record to stderr in the configured format and level, in batches
    (relay/logwriter.py)."""
    global _writer
    # The logging HOWTO's "Optimization": no line writes the caller's file and line, the
    # thread or the process, so the records need not look them up (a stack walk each).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    line_format = formatter(cfg.format)
    handler = BatchWriter(sys.stderr, renderer(line_format))
    handler.setFormatter(line_format)
    logging.basicConfig(level=cfg.level, handlers=[handler], force=True)
    _writer = handler
