"""A lean HTTP/1.1 client for business requests: one POST, a streamed body, pooled
keep-alive connections. aiohttp's client costs several hundred µs of CPU per request; this
one does only what the business wire needs (docs/protocol.md §2.1): POST, status, headers,
chunked / Content-Length / close-delimited bodies, TLS, keep-alive. It never retries.

Idle pooled connections are swept once a second while there are any: those the server closed
(or wrote to while idle) and those idle longer than their keep-alive timeout are closed, so
none lingers in CLOSE-WAIT until the next request to that server.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
IDLE_TIMEOUT_S = 4.0  # below common server keep-alive timeouts (Node.js: 5 s)
SWEEP_INTERVAL_S = 1.0  # how often idle connections are checked while there are any
MAX_IDLE_PER_ORIGIN = 512
USER_AGENT = "voice-relay/0.1"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # RFC 9112 §7.1: chunk-size = 1*HEXDIG
_FIELD_UNSAFE = re.compile(r"[\r\n\0]")


class HTTPError(Exception):
    """The peer broke HTTP/1.1 or the connection failed; the request is over."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed request URL: where to connect and what to send as target and Host."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse an http:// or https:// URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, target, host_header)


class _Conn:
    __slots__ = ("idle_since", "keepalive_s", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.keepalive_s = IDLE_TIMEOUT_S

    def usable(self, now: float) -> bool:
        # Bytes that arrived while idle (a server's 408 before it closes) are no answer to
        # the next request: such a connection is done. StreamReader has no public peek.
        # A server that closed its side leaves the reader at EOF (our socket in CLOSE-WAIT).
        return (
            now - self.idle_since < self.keepalive_s
            and not self.reader._buffer  # type: ignore[attr-defined]
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class Response:
    """Status, headers and a body read piece by piece; `release()` when done."""

    def __init__(self, client: HTTPClient, key: tuple[str, str, int], conn: _Conn) -> None:
        self._client = client
        self._key = key
        self._conn: _Conn | None = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._keep_alive = True
        self._chunked = False
        self._remaining: int | None = None  # bytes left: of the body, or of the current chunk
        self._done = False

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def _read_head(self) -> None:
        while True:
            await self._read_one_head()
            if not 100 <= self.status < 200:
                return
            self.headers = {}  # an interim 1xx answer: the real one follows

    async def _read_one_head(self) -> None:
        reader = self._reader()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HTTPError("response head too large") from exc
        except asyncio.IncompleteReadError as exc:
            raise HTTPError("connection closed before the response") from exc
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, _reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not _digits(code):
            raise HTTPError("malformed status line")
        self.status = int(code)
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HTTPError("malformed header line")
            key = name.lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        conn_tokens = self.headers.get("connection", "").lower()
        self._keep_alive = (
            "close" not in conn_tokens if version == "HTTP/1.1" else "keep-alive" in conn_tokens
        )
        self._chunked = False
        self._remaining = None
        if self.status in (204, 304) or self.status < 200:
            self._remaining = 0  # never a body, whatever the headers say (RFC 9112 §6.3)
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif (length := self.headers.get("content-length")) is not None:
            if not _digits(length):
                raise HTTPError("bad Content-Length")
            self._remaining = int(length)
        else:
            self._keep_alive = False  # the body ends when the server closes

    async def read(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        if self._done:
            return b""
        reader = self._reader()
        try:
            if self._chunked:
                return await self._read_chunked(reader)
            if self._remaining is None:
                data = await reader.read(READ_SIZE)
                self._done = not data
                return data
            if self._remaining == 0:
                self._done = True
                return b""
            data = await reader.read(min(self._remaining, READ_SIZE))
            if not data:
                raise HTTPError("connection closed inside the body")
            self._remaining -= len(data)
            return data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise HTTPError("malformed body") from exc

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        while True:
            if self._remaining:
                data = await reader.read(min(self._remaining, READ_SIZE))
                if not data:
                    raise HTTPError("connection closed inside a chunk")
                self._remaining -= len(data)
                if self._remaining == 0 and await reader.readexactly(2) != b"\r\n":
                    raise HTTPError("chunk data not followed by CRLF")
                return data
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise HTTPError("bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers, ignored
                self._done = True
                return b""
            self._remaining = size

    def release(self) -> None:
        """Return the connection to the pool when the body was read to its end, else close."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep_alive:
            self._client._put(self._key, conn)
        else:
            conn.close()

    def _reader(self) -> asyncio.StreamReader:
        if self._conn is None:
            raise HTTPError("response already released")
        return self._conn.reader


class HTTPClient:
    """Pools keep-alive connections per origin; one request per connection at a time."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        # Per origin, idle connections oldest first: reuse takes the newest (its peer is the
        # least likely to have timed it out) and expiry trims the oldest, so the pool
        # shrinks back after a burst.
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._ssl = ssl_context
        self._closed = False
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def post(
        self,
        endpoint: Endpoint,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_timeout_s: float,
        keepalive_s: float | None = None,
    ) -> Response:
        """Send a POST and read the response head; the caller reads the body and releases.
        The connection then waits in the pool at most `keepalive_s` (default IDLE_TIMEOUT_S)
        for the next request to this origin."""
        if self._closed:
            raise HTTPError("client closed")
        key = (endpoint.scheme, endpoint.host, endpoint.port)
        lines = [
            f"POST {endpoint.target} HTTP/1.1",
            f"Host: {endpoint.host_header}",
            f"User-Agent: {USER_AGENT}",
            "Accept-Encoding: identity",
            f"Content-Length: {len(body)}",
        ]
        for name, value in headers.items():
            if _FIELD_UNSAFE.search(name) or _FIELD_UNSAFE.search(value) or ":" in name:
                raise ValueError(f"unsafe header {name!r}")
            lines.append(f"{name}: {value}")
        # Encoded before a connection is taken: an unencodable head leaks none.
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = self._take(key) or await self._connect(endpoint, connect_timeout_s)
        conn.keepalive_s = IDLE_TIMEOUT_S if keepalive_s is None else keepalive_s
        resp = Response(self, key, conn)
        try:
            conn.writer.write(head + body)
            await conn.writer.drain()
            await resp._read_head()
        except BaseException:
            resp._keep_alive = False
            resp.release()
            raise
        return resp

    async def close(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _put(self, key: tuple[str, str, int], conn: _Conn) -> None:
        conns = self._idle.get(key)
        if conns is None:
            conns = self._idle[key] = deque()
        now = time.monotonic()
        while conns and now - conns[0].idle_since >= conns[0].keepalive_s:
            conns.popleft().close()
        if self._closed or len(conns) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = now
        conns.append(conn)
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        if self._sweep_timer is None and self._idle and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweep_timer = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        # Closes what the next request would discard anyway, without waiting for it.
        self._sweep_timer = None
        now = time.monotonic()
        for key, conns in list(self._idle.items()):
            keep: deque[_Conn] = deque()
            for conn in conns:
                if conn.usable(now):
                    keep.append(conn)
                else:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._arm_sweep()

    async def _connect(self, endpoint: Endpoint, timeout_s: float) -> _Conn:
        ctx: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            if self._ssl is None:  # built once: it loads the system CA store
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=ctx,
                    server_hostname=endpoint.host if ctx else None,
                    limit=MAX_HEADER_BYTES,
                )
        except TimeoutError as exc:
            raise HTTPError("connect timed out") from exc
        return _Conn(reader, writer)


def _digits(text: str) -> bool:
    # str.isdigit() alone accepts "²" and other non-ASCII digits, which int() rejects.
    return text.isascii() and text.isdigit()
