"""The edge: every socket the relay accepts passes here before aiohttp reads a byte of it, so
before any authentication (README, "Limits at the edge").

- It caps sockets in total (`[server] max_connections`) and, per client address, the sockets
  that are not device WebSockets (`max_http_per_address`): beyond either, a socket gets a
  503 and is closed. A reserve of `probe_reserve` sockets beyond the total serves only
  `/healthz`, `/readyz` and `/metrics`, so probes answer while the relay is full.
- A request head not complete `request_head_timeout_s` after the socket opened (or after the
  first byte of the next request on a kept-alive socket) gets a 408 and the socket closes.
- On a device WebSocket it walks the client's frame headers and closes with 1002 on a frame
  without the mask bit (RFC 6455 §5.1), which aiohttp accepts.

aiohttp has none of these (its maintainers leave connection limits to the application or a
proxy), so `Edge.listen` serves aiohttp's protocol wrapped in `EdgeProtocol`, and
`edge_middleware` tells each wrapper where its requests begin and end. The request body's
deadline is kept where bodies are read (relay/http/api.py `read_body`)."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from metrics.registry import Metrics
from protocol.errors import ApiError, CloseCode, api_error_body
from protocol.websocket import MaskCheck, close_frame
from relay.answers import api_error
from relay.config.schema import ServerConfig

log = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# A refused socket reads and drops what the client sends for this long after the 503, so
# that closing with unread bytes does not reset the connection before the client reads it.
REFUSED_LINGER_S = 1.0
WARN_EVERY_S = 60.0  # at most one warning a minute per refusal reason, with the count
_QUIET = frozenset({"malformed"})  # internet background noise: counted, logged at DEBUG only

# What a wrapper is waiting for.
_HEAD, _REQUEST, _IDLE, _FRAMES, _REFUSED = range(5)


def auto_max_connections() -> int:
    """`max_connections = 0`: half the process's descriptor limit, leaving the other half to
    business, provider and Redis sockets, files and pipes."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft // 2)


def raw_response(code: ApiError, error: str) -> bytes:
    """A whole HTTP/1.1 error answer in the API's shape, for a socket aiohttp never saw."""
    status, fields = api_error_body(code, error)
    body = orjson.dumps(fields)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_FULL = "the relay is at its connection limit"
_OVER_CAPACITY = raw_response(ApiError.OVER_CAPACITY, _FULL)
_HEAD_TIMEOUT = raw_response(ApiError.REQUEST_TIMEOUT, "request head not received in time")


class Edge:
    """The caps and counts of one serving process; `EdgeProtocol` asks it to admit sockets."""

    def __init__(self, cfg: ServerConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.max_total = cfg.max_connections or auto_max_connections()
        # One address never holds more than half the sockets, whatever the descriptor limit.
        per_address = cfg.max_http_per_address
        self.max_per_address = min(per_address, max(1, self.max_total // 2)) if per_address else 0
        self._refused = metrics.edge_refused
        self._open = 0
        self._http: dict[str, int] = {}  # per address: sockets that are not device WebSockets
        self._conns: dict[asyncio.BaseTransport, EdgeProtocol] = {}
        self._warned: dict[str, tuple[float, int]] = {}  # reason -> (last warning, since)
        self.server_log = ServerLog(self)

    async def listen(self, runner: web.BaseRunner, sock: socket.socket) -> asyncio.Server:
        """Serve `runner` (set up) on the listening `sock`, every socket through the edge."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: EdgeProtocol(self, server()), sock=sock)

    def connection(self, request: web.BaseRequest) -> EdgeProtocol | None:
        """The wrapper of the socket `request` came on; None when served without the edge."""
        transport = request.transport
        return None if transport is None else self._conns.get(transport)

    def admit(self, conn: EdgeProtocol, transport: asyncio.BaseTransport) -> str:
        """Count a new socket in, or return why it is refused."""
        per_address = self.max_per_address
        count = self._http.get(conn.address, 0)
        if per_address and count >= per_address:
            return "address_cap"
        if self._open >= self.max_total + self.cfg.probe_reserve:
            return "total_cap"
        conn.probe_only = self._open >= self.max_total
        self._open += 1
        self._http[conn.address] = count + 1
        self._conns[transport] = conn
        return ""

    def became_device(self, conn: EdgeProtocol) -> None:
        """A device WebSocket opened on `conn`: it leaves its address's HTTP count."""
        self._leave_http(conn.address)

    def release(self, conn: EdgeProtocol, transport: asyncio.BaseTransport, http: bool) -> None:
        """An admitted socket closed."""
        self._open -= 1
        if http:
            self._leave_http(conn.address)
        self._conns.pop(transport, None)

    def _leave_http(self, address: str) -> None:
        left = self._http[address] - 1
        if left:
            self._http[address] = left
        else:
            del self._http[address]

    def refused(self, reason: str) -> None:
        """Count a refusal; warn at most once a minute per reason, with how many since."""
        self._refused.labels(reason).inc()
        if reason in _QUIET:
            return
        now = asyncio.get_running_loop().time()
        last, since = self._warned.get(reason, (-WARN_EVERY_S, 0))
        if now - last < WARN_EVERY_S:
            self._warned[reason] = (last, since + 1)
            return
        self._warned[reason] = (now, 0)
        log.warning("edge: %s (%d more since the last report)", reason, since)


class EdgeProtocol(asyncio.Protocol):
    """One accepted socket: admission, the head deadline, the mask check; everything else is
    aiohttp's protocol (`inner`), which gets every callback unchanged."""

    def __init__(self, edge: Edge, inner: asyncio.Protocol) -> None:
        self._edge = edge
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self.address = ""
        self.probe_only = False  # admitted into the probe reserve
        self.close_code: int | None = None  # set when the edge closed a device WebSocket
        self._http = True  # counted among its address's HTTP sockets
        self._state = _HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._frames: MaskCheck | None = None
        self._frames_open = False
        self._unmasked = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self._transport = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else ""
        reason = self._edge.admit(self, t)
        if reason:
            self._refuse(t, reason)
            return
        self._inner.connection_made(t)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _FRAMES:
            if self._unmasked:
                return  # nothing more reaches aiohttp
            assert self._frames is not None
            if not self._frames.feed(data):
                self._unmasked = True
                if self._frames_open:
                    self._fail_frames()
                return
        elif state == _IDLE:
            self._expect_head()
        elif state == _REFUSED:
            return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._state == _REFUSED:
            return None  # the transport closes
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._state == _REFUSED:
            return
        assert self._transport is not None
        self._edge.release(self, self._transport, self._http)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._state != _REFUSED:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._state != _REFUSED:
            self._inner.resume_writing()

    # told by edge_middleware and the device endpoint

    def request_started(self) -> None:
        """aiohttp has a whole head: the head deadline is met."""
        self._stop_timer()
        if self._state in (_HEAD, _IDLE):
            self._state = _REQUEST

    def request_done(self) -> None:
        """The handler returned; the next bytes start the next head."""
        if self._state == _REQUEST:
            self._state = _IDLE
        elif self._state == _FRAMES and not self._frames_open:  # the upgrade was refused
            self._frames = None
            self._state = _IDLE
            if self._unmasked and self._transport is not None:
                self._transport.close()  # bytes that were held back cannot be given back

    def expect_frames(self, tail: bytes) -> None:
        """Just before the upgrade: from here on the client's bytes are WebSocket frames,
        starting with `tail`, which aiohttp already holds (see `upgrade_tail`)."""
        self._state = _FRAMES
        self._frames = MaskCheck()
        self._unmasked = not self._frames.feed(tail)

    def frames_open(self) -> None:
        """The 101 is written: a device WebSocket. Acts on an unmasked frame seen before."""
        self._frames_open = True
        if self._http:
            self._http = False
            self._edge.became_device(self)
        if self._unmasked:
            self._fail_frames()

    # inside

    def _expect_head(self) -> None:
        self._state = _HEAD
        self._stop_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._edge.cfg.request_head_timeout_s, self._head_late)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._state == _HEAD and self._transport is not None:
            self._edge.refused("head_timeout")
            self._transport.write(_HEAD_TIMEOUT)
            self._transport.close()

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self._state = _REFUSED
        self._edge.refused(reason)
        transport.write(_OVER_CAPACITY)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def _fail_frames(self) -> None:
        """RFC 6455 §7.1.7: send the close frame, then close the socket."""
        self._edge.refused("unmasked_frame")
        self.close_code = CloseCode.PROTOCOL_ERROR
        if self._transport is not None:
            self._transport.write(close_frame(CloseCode.PROTOCOL_ERROR))
            self._transport.close()


def upgrade_tail(request: web.BaseRequest) -> bytes:
    """The bytes aiohttp received after an upgrade request's head and holds for the
    WebSocket reader (a client may send frames before it has the 101). aiohttp keeps them
    in a private attribute; tests/relay/test_edge.py sends such frames, so a rename fails."""
    return bytes(getattr(request.protocol, "_message_tail", b""))


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger (the runner's `logger=`): a malformed request (its head, or a
    body that does not decode, met again while aiohttp drops what the handler left unread)
    is counted and logged as one DEBUG line instead of an ERROR with a traceback; anything
    else, such as a handler's bug, passes unchanged."""

    def __init__(self, edge: Edge) -> None:
        super().__init__(logging.getLogger("relay.edge.http"), {})
        self._edge = edge

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if level >= logging.ERROR and isinstance(exc, HttpProcessingError | RequestPayloadError):
            self._edge.refused("malformed")
            self.logger.debug("malformed request: %r", str(exc).split("\n", 1)[0][:80])
            return
        super().log(level, msg, *args, **kwargs)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EDGE_KEY = web.AppKey("edge", Edge)


@web.middleware
async def edge_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Tell the socket's wrapper a request began and ended; on a probe-reserve socket, serve
    only the probes."""
    edge = request.app[EDGE_KEY]
    conn = edge.connection(request)
    if conn is None:
        return await handler(request)
    conn.request_started()
    try:
        if conn.probe_only and request.path not in PROBE_PATHS:
            edge.refused("probe_only")
            resp = api_error(ApiError.OVER_CAPACITY, _FULL)
            resp.force_close()
            return resp
        return await handler(request)
    finally:
        conn.request_done()
