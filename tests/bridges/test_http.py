"""bridges/http.py against real peers on loopback, byte for byte.

Normal exchanges run against an aiohttp server; edge cases run against raw asyncio servers
that write hand-crafted HTTP bytes and record exactly what the client sent (docs/protocol.md §2.1).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

import bridges.http
from bridges.http import (
    MAX_HEADER_BYTES,
    USER_AGENT,
    Endpoint,
    HTTPClient,
    HTTPError,
    Response,
)

# ---- raw peers ---------------------------------------------------------------------------


async def settle() -> None:
    """Give the loop time to deliver what was written and let the client consume it."""
    await asyncio.sleep(0.001)


class Peer:
    """One TCP connection a raw server accepted: reads requests, writes hand-crafted bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []
        self.client_closed = asyncio.Event()

    async def request(self) -> bytes | None:
        """Read one request (head and Content-Length body) and record it; None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        raw = head + await self.reader.readexactly(length)
        self.requests.append(raw)
        return raw

    async def send(self, *pieces: bytes) -> None:
        """Write each piece as its own TCP write, letting the client read it before the next."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await settle()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A loopback TCP server running `handler` per connection; remembers every connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.port = 0
        self.host = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str) -> None:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    def endpoint(self, path: str = "/") -> Endpoint:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return Endpoint.parse(f"http://{shown}:{self.port}{path}")

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except ConnectionError:
            peer.client_closed.set()  # reset by the client while we were writing
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()  # handlers then end on EOF or a reset
        tasks = list(self._tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=1)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()


RawFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawFactory]:
    """Start raw servers: `await raw_server(handler, host="127.0.0.1")`."""
    servers: list[RawServer] = []

    async def start(handler: Handler, host: str = "127.0.0.1") -> RawServer:
        server = RawServer(handler)
        await server.start(host)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    http = HTTPClient()
    yield http
    await http.close()


def answer(*pieces: bytes, close: bool = False) -> Handler:
    """Answer every request on a connection with `pieces` (separate writes); maybe close."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*pieces)
            if close:
                return

    return handler


def body_of(request: bytes) -> bytes:
    return request.split(b"\r\n\r\n", 1)[1]


async def post(
    client: HTTPClient,
    endpoint: Endpoint,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> Response:
    async with asyncio.timeout(2):
        return await client.post(endpoint, body, headers or {}, connect_timeout_s=2.0)


async def read_pieces(resp: Response) -> list[bytes]:
    """Every piece `read()` returns up to the end of the body."""
    pieces = []
    async with asyncio.timeout(2):
        while piece := await resp.read():
            pieces.append(piece)
    return pieces


async def fetch(
    client: HTTPClient,
    endpoint: Endpoint,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> tuple[Response, bytes]:
    """One whole exchange: POST, read the body to its end, release."""
    resp = await post(client, endpoint, body, headers)
    data = b"".join(await read_pieces(resp))
    resp.release()
    return resp, data


async def read_until_error(resp: Response) -> tuple[list[bytes], Exception | None]:
    """The pieces `read()` returned before it raised (None: the body ended cleanly)."""
    pieces = []
    try:
        async with asyncio.timeout(2):
            while piece := await resp.read():
                pieces.append(piece)
    except HTTPError as exc:
        return pieces, exc
    return pieces, None


async def closed_by_client(peer: Peer, timeout: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await peer.client_closed.wait()
    except TimeoutError:
        return False
    return True


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# Chunk extensions (with and without values, quoted), trailers, upper- and lower-case hex.
CHUNKED_BODY = (
    b"4;name=value\r\nWiki\r\n"
    b"5 ; flag\r\npedia\r\n"
    b'E;q="a;b"\r\n in\r\n\r\nchunks.\r\n'
    b"a\r\n0123456789\r\n"
    b"0;last\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n"
)
CHUNKED_DECODED = b"Wikipedia in\r\n\r\nchunks.0123456789"


# ---- Endpoint.parse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/chat", ("http", "example.com", 80, "/chat", "example.com")),
        ("http://example.com:80/chat", ("http", "example.com", 80, "/chat", "example.com")),
        ("http://example.com:8080", ("http", "example.com", 8080, "/", "example.com:8080")),
        ("http://example.com?a=1", ("http", "example.com", 80, "/?a=1", "example.com")),
        (
            "https://example.com/a/b?x=1&y=%20z#frag",
            ("https", "example.com", 443, "/a/b?x=1&y=%20z", "example.com"),
        ),
        ("https://example.com:443/", ("https", "example.com", 443, "/", "example.com")),
        ("https://example.com:80/", ("https", "example.com", 80, "/", "example.com:80")),
        ("http://example.com:443/", ("http", "example.com", 443, "/", "example.com:443")),
        ("HTTP://Example.COM/Path", ("http", "example.com", 80, "/Path", "example.com")),
        ("http://10.0.0.7:8090/chat", ("http", "10.0.0.7", 8090, "/chat", "10.0.0.7:8090")),
        ("http://[::1]:8090/x?y", ("http", "::1", 8090, "/x?y", "[::1]:8090")),
        ("https://[2001:db8::1]/", ("https", "2001:db8::1", 443, "/", "[2001:db8::1]")),
        ("http://[2001:DB8::1]:80/", ("http", "2001:db8::1", 80, "/", "[2001:db8::1]")),
    ],
)
def test_endpoint_parse(url: str, expected: tuple[str, str, int, str, str]) -> None:
    e = Endpoint.parse(url)
    assert (e.scheme, e.host, e.port, e.target, e.host_header) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/chat",
        "//example.com/chat",
        "ftp://example.com/",
        "ws://example.com/",
        "mailto:someone@example.com",
        "http:///chat",
        "http://:8080/chat",
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://[::1/",
    ],
)
def test_endpoint_parse_rejects(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract, texts vary
        Endpoint.parse(url)


# ---- the request on the wire -------------------------------------------------------------


async def test_request_head_and_body_are_byte_exact(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(OK_EMPTY))
    body = b'{"type":"chat","details":{"msg":"h\xc3\xa9"}}'
    headers = {"Content-Type": "application/json", "Authorization": "Bearer t0k", "X-A": "1"}
    await fetch(client, server.endpoint("/v1/chat?agent=a%20b&x=1#ignored"), body, headers)
    assert server.peers[0].requests == [
        b"POST /v1/chat?agent=a%20b&x=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + f"User-Agent: {USER_AGENT}\r\n".encode()
        + b"Accept-Encoding: identity\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + b"Authorization: Bearer t0k\r\n"
        + b"X-A: 1\r\n"
        + b"\r\n"
        + body
    ]


async def test_empty_body_and_root_target(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(OK_EMPTY))
    endpoint = Endpoint.parse(f"http://127.0.0.1:{server.port}")
    await fetch(client, endpoint)
    assert server.peers[0].requests == [
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept-Encoding: identity\r\nContent-Length: 0\r\n\r\n".encode()
    ]


async def test_host_header_omits_the_default_port(
    raw_server: RawFactory, client: HTTPClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await raw_server(answer(OK_EMPTY))
    real_open = asyncio.open_connection
    dialled: list[tuple[str, int]] = []

    async def to_test_server(
        host: str, port: int, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        dialled.append((host, port))
        return await real_open(host, server.port, **kwargs)  # port 80 needs no root here

    monkeypatch.setattr(asyncio, "open_connection", to_test_server)
    await fetch(client, Endpoint.parse("http://127.0.0.1/chat"))
    await fetch(client, Endpoint.parse("http://127.0.0.1:80/chat"))
    assert dialled == [("127.0.0.1", 80)]  # the second request reused the connection
    assert [r.split(b"\r\n")[1] for r in server.peers[0].requests] == [b"Host: 127.0.0.1"] * 2


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_literal_host(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6"), "::1")
    resp, data = await fetch(client, Endpoint.parse(f"http://[::1]:{server.port}/v6?q=1"))
    assert (resp.status, data) == (200, b"v6")
    head = server.peers[0].requests[0].split(b"\r\n")
    assert head[:2] == [b"POST /v6?q=1 HTTP/1.1", f"Host: [::1]:{server.port}".encode()]


# ---- status and headers ------------------------------------------------------------------


async def test_status_and_headers(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(
        answer(
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"CONTENT-TYPE:  Text/Event-Stream ; charset=UTF-8  \r\n"
            b"X-Rep: a\r\n"
            b"Retry-After:7\r\n"
            b"x-rep: b,c\r\n"
            b"X-Empty:\r\n"
            b"X-Rep: d\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    )
    resp, data = await fetch(client, server.endpoint())
    assert resp.status == 503
    assert data == b""
    assert resp.headers == {
        "content-type": "Text/Event-Stream ; charset=UTF-8",
        "x-rep": "a, b,c, d",
        "retry-after": "7",
        "x-empty": "",
        "content-length": "0",
    }
    assert resp.content_type == "text/event-stream"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"", ""),
        (b"Content-Type: application/json\r\n", "application/json"),
        (b"Content-Type: text/event-stream;charset=utf-8\r\n", "text/event-stream"),
        (b"content-type: TEXT/EVENT-STREAM\r\n", "text/event-stream"),
    ],
)
async def test_content_type(
    raw_server: RawFactory, client: HTTPClient, header: bytes, expected: str
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\n" + header + b"Content-Length: 0\r\n\r\n")
    )
    resp, _ = await fetch(client, server.endpoint())
    assert resp.content_type == expected


async def test_status_line_without_reason(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(b"HTTP/1.1 404\r\nContent-Length: 4\r\n\r\nnope"))
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (404, b"nope")


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    ],
)
async def test_interim_responses_are_skipped(
    raw_server: RawFactory, client: HTTPClient, interim: bytes
) -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 1\r\n\r\nfinal"
    server = await raw_server(answer(interim, final))
    for _ in range(2):
        resp, data = await fetch(client, server.endpoint())
        assert (resp.status, data) == (200, b"final")
        assert resp.headers == {"content-length": "5", "x-final": "1"}
    assert server.connections == 1


# ---- bodies ------------------------------------------------------------------------------


async def test_content_length_body_arrives_piece_by_piece(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b"he", b"llo ", b"w", b"orld")
    )
    resp = await post(client, server.endpoint())
    assert await read_pieces(resp) == [b"he", b"llo ", b"w", b"orld"]
    assert await resp.read() == b""  # the end stays the end
    resp.release()


async def test_content_length_body_split_at_every_byte(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    body = bytes(range(0, 256, 4))
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    server = await raw_server(answer(*(bytes([b]) for b in head + body)))
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (200, body)
    # The exact length was consumed: the next response on the connection parses cleanly.
    resp, data = await fetch(client, server.endpoint())
    assert data == body
    assert server.connections == 1


async def test_content_length_body_stops_at_its_length(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneHTTP/1.1 201 Created\r\n\r\n")
    )
    resp = await post(client, server.endpoint())
    assert await read_pieces(resp) == [b"one"]
    resp.release()


async def test_chunked_body_with_extensions_and_trailers(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(CHUNKED_HEAD + CHUNKED_BODY))
    resp, data = await fetch(client, server.endpoint())
    assert data == CHUNKED_DECODED
    assert "x-trailer" not in resp.headers


async def test_chunked_body_split_at_every_position(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    # The split point is in the request body; every response reuses one connection, which
    # also proves the reader stops exactly after the trailers each time.
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            cut = int(body_of(request))
            await peer.send(CHUNKED_HEAD, CHUNKED_BODY[:cut], CHUNKED_BODY[cut:])

    server = await raw_server(handler)
    for cut in range(1, len(CHUNKED_BODY)):
        resp, data = await fetch(client, server.endpoint(), str(cut).encode())
        assert data == CHUNKED_DECODED, f"split at {cut}: {CHUNKED_BODY[:cut]!r}"
    assert server.connections == 1


async def test_chunked_body_byte_by_byte(raw_server: RawFactory, client: HTTPClient) -> None:
    wire = CHUNKED_HEAD + CHUNKED_BODY
    server = await raw_server(answer(*(bytes([b]) for b in wire)))
    for _ in range(2):
        _, data = await fetch(client, server.endpoint())
        assert data == CHUNKED_DECODED
    assert server.connections == 1


async def test_chunked_pieces_arrive_as_sent(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(
        answer(CHUNKED_HEAD, b"3\r\none\r\n", b"5\r\nthree\r\n", b"3\r\ntwo\r\n", b"0\r\n\r\n")
    )
    resp = await post(client, server.endpoint())
    assert await read_pieces(resp) == [b"one", b"three", b"two"]
    resp.release()


async def test_chunked_large_chunk(raw_server: RawFactory, client: HTTPClient) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB, larger than one read
    server = await raw_server(
        answer(CHUNKED_HEAD + f"{len(big):X}\r\n".encode() + big + b"\r\n0\r\n\r\n")
    )
    _, data = await fetch(client, server.endpoint())
    assert data == big


async def test_chunked_wins_over_content_length(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(
        answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
    )
    _, data = await fetch(client, server.endpoint())
    assert data == b"hello"


async def test_close_delimited_body(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\n\r\n", b"no ", b"length, ", b"until EOF", close=True)
    )
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (200, b"no length, until EOF")
    _, data = await fetch(client, server.endpoint())
    assert data == b"no length, until EOF"
    assert server.connections == 2


async def test_http_1_0_response(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"))
    for _ in range(2):
        resp, data = await fetch(client, server.endpoint())
        assert (resp.status, data) == (200, b"old")
    assert server.connections == 2  # HTTP/1.0 without keep-alive: one connection each
    assert all([await closed_by_client(peer) for peer in server.peers])


async def test_http_1_0_keep_alive_response_is_reused(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok")
    )
    for _ in range(3):
        _, data = await fetch(client, server.endpoint())
        assert data == b"ok"
    assert server.connections == 1


async def test_http_1_0_close_delimited(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(b"HTTP/1.0 200 OK\r\n\r\nbody", b" to EOF", close=True))
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (200, b"body to EOF")


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_no_body_statuses(raw_server: RawFactory, client: HTTPClient, status: bytes) -> None:
    # The server keeps the connection open: the client must not wait for a body or an EOF.
    server = await raw_server(answer(b"HTTP/1.1 " + status + b"\r\nX-A: 1\r\n\r\n"))
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (int(status[:3]), b"")


async def test_no_body_status_keeps_the_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    for _ in range(2):
        resp, _ = await fetch(client, server.endpoint())
        assert resp.status == 204
    assert server.connections == 1


# ---- keep-alive --------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    for n in range(3):
        _, data = await fetch(client, server.endpoint(), f"req{n}".encode())
        assert data == b"ok"
    assert server.connections == 1
    assert [body_of(r) for r in server.peers[0].requests] == [b"req0", b"req1", b"req2"]


async def test_chunked_responses_reuse_one_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(CHUNKED_HEAD, CHUNKED_BODY))
    for _ in range(3):
        await fetch(client, server.endpoint())
    assert server.connections == 1


async def test_concurrent_requests_use_separate_connections(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    first = await post(client, server.endpoint())
    second = await post(client, server.endpoint())  # the first still holds its connection
    assert [await read_pieces(first), await read_pieces(second)] == [[b"ok"], [b"ok"]]
    first.release()
    second.release()
    for _ in range(2):
        await fetch(client, server.endpoint())
    assert server.connections == 2


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    ],
)
async def test_connection_close_is_not_reused(
    raw_server: RawFactory, client: HTTPClient, response: bytes
) -> None:
    server = await raw_server(answer(response))
    for _ in range(2):
        _, data = await fetch(client, server.endpoint())
        assert data == b"ok"
    assert server.connections == 2
    assert await closed_by_client(server.peers[0])


@pytest.mark.parametrize("read_first", [0, 1])
async def test_unfinished_response_is_not_reused(
    raw_server: RawFactory, client: HTTPClient, read_first: int
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"abc", b"def")
    )
    resp = await post(client, server.endpoint())
    for _ in range(read_first):
        assert b"abcdef".startswith(await resp.read())
    resp.release()
    assert await closed_by_client(server.peers[0])
    _, data = await fetch(client, server.endpoint())
    assert data == b"abcdef"
    assert server.connections == 2


async def test_release_twice_is_harmless(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    resp, _ = await fetch(client, server.endpoint())
    resp.release()  # a second time: the connection must not enter the pool twice
    assert await resp.read() == b""
    a = await post(client, server.endpoint(), b"a")
    b = await post(client, server.endpoint(), b"b")
    assert [await read_pieces(a), await read_pieces(b)] == [[b"ok"], [b"ok"]]
    a.release()
    b.release()
    assert server.connections == 2
    assert [[body_of(r) for r in p.requests] for p in server.peers] == [[b"", b"a"], [b"b"]]


async def test_read_after_release_of_unfinished_response_raises(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    resp = await post(client, server.endpoint())
    resp.release()
    with pytest.raises(HTTPError):
        await resp.read()


async def test_connection_closed_by_server_while_idle_is_replaced(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", close=True)
    )
    _, data = await fetch(client, server.endpoint())
    assert data == b"first"
    await asyncio.sleep(0.05)  # the server's FIN reaches the pooled, idle connection
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (200, b"first")
    assert server.connections == 2


async def test_stale_bytes_on_an_idle_connection_are_not_taken_as_the_answer(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    async def handler(peer: Peer) -> None:
        if peer is not server.peers[0]:
            return await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")(peer)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await asyncio.sleep(0.02)  # the idle timeout of a server that says goodbye
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")

    server = await raw_server(handler)
    await fetch(client, server.endpoint())
    await asyncio.sleep(0.05)
    resp, data = await fetch(client, server.endpoint())
    assert (resp.status, data) == (200, b"second")


async def test_idle_connection_expires(
    raw_server: RawFactory, client: HTTPClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridges.http, "IDLE_TIMEOUT_S", 0.05)
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    await fetch(client, server.endpoint())
    await fetch(client, server.endpoint())  # well within the idle timeout: reused
    assert server.connections == 1
    await asyncio.sleep(0.08)
    _, data = await fetch(client, server.endpoint())
    assert data == b"ok"
    assert server.connections == 2
    assert await closed_by_client(server.peers[0])  # the expired one is closed, not leaked


async def test_expired_idle_connections_are_closed_when_another_returns(
    raw_server: RawFactory, client: HTTPClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridges.http, "IDLE_TIMEOUT_S", 0.05)
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    old = await post(client, server.endpoint())
    new = await post(client, server.endpoint())
    await read_pieces(old)
    old.release()
    await asyncio.sleep(0.08)
    await read_pieces(new)
    new.release()  # no request follows: the pool shrinks back on its own
    assert await closed_by_client(server.peers[0])
    assert not server.peers[1].client_closed.is_set()
    await fetch(client, server.endpoint())
    assert server.connections == 2


async def test_pool_reuses_the_newest_idle_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    older = await post(client, server.endpoint(), b"older")
    newer = await post(client, server.endpoint(), b"newer")
    for resp in (older, newer):
        await read_pieces(resp)
        resp.release()
    await fetch(client, server.endpoint(), b"next")
    assert [[body_of(r) for r in p.requests] for p in server.peers] == [
        [b"older"],
        [b"newer", b"next"],
    ]


async def test_pool_is_per_origin(raw_server: RawFactory, client: HTTPClient) -> None:
    one = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"))
    two = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"))
    got = [(await fetch(client, s.endpoint()))[1] for s in (one, two, one, two)]
    assert got == [b"one", b"two", b"one", b"two"]
    assert (one.connections, two.connections) == (1, 1)


async def test_close_closes_pooled_connections(raw_server: RawFactory) -> None:
    http = HTTPClient()
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    in_flight = await post(http, server.endpoint())
    await fetch(http, server.endpoint())  # a second connection, now idle in the pool
    await http.close()
    assert await closed_by_client(server.peers[1])
    assert not server.peers[0].client_closed.is_set()
    assert await read_pieces(in_flight) == [b"ok"]  # a response in flight still completes
    in_flight.release()  # after close(): closed, not pooled
    assert await closed_by_client(server.peers[0])
    with pytest.raises(HTTPError):
        await post(http, server.endpoint())
    assert server.connections == 2
    await http.close()  # twice is harmless


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"\r\n\r\n",
        b"200 OK\r\nContent-Length: 0\r\n\r\n",
        pytest.param(
            b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n",
            id="non-ascii-digit",
        ),
        pytest.param(
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            id="four-digit-status",
        ),
        pytest.param(
            b"HTTP/1.1 20\r\nContent-Length: 0\r\n\r\n",
            id="two-digit-status",
        ),
    ],
)
async def test_malformed_status_line(
    raw_server: RawFactory, client: HTTPClient, head: bytes
) -> None:
    server = await raw_server(answer(head))
    with pytest.raises(HTTPError) as error:
        await post(client, server.endpoint())
    # The error, and the frames it holds, stays alive while we check: the client itself must
    # close the connection, not the garbage collector.
    assert await closed_by_client(server.peers[0]), error.value


@pytest.mark.parametrize(
    "line",
    [
        b"NoColon",
        b" Folded: continuation",
        b"\tFolded: continuation",
        b"Name : space before colon",
        b": no name",
        b"Content-Length: -1",
        b"Content-Length: 1.5",
        b"Content-Length: 0x10",
        b"Content-Length:",
        b"Content-Length: 2\r\nContent-Length: 3",
        pytest.param(
            b"Content-Length: \xb2",
            id="content-length-non-ascii-digit",
        ),
    ],
)
async def test_malformed_header_line(
    raw_server: RawFactory, client: HTTPClient, line: bytes
) -> None:
    server = await raw_server(answer(b"HTTP/1.1 200 OK\r\nX-Ok: 1\r\n" + line + b"\r\n\r\nok"))
    with pytest.raises(HTTPError) as error:
        await post(client, server.endpoint())
    # The error, and the frames it holds, stays alive while we check: the client itself must
    # close the connection, not the garbage collector.
    assert await closed_by_client(server.peers[0]), error.value


async def test_head_just_under_the_limit(raw_server: RawFactory, client: HTTPClient) -> None:
    status = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    filler = b"x" * (MAX_HEADER_BYTES - len(status) - len(b"X-Big: \r\n\r\n") - 1)
    server = await raw_server(answer(status + b"X-Big: " + filler + b"\r\n\r\n"))
    resp, _ = await fetch(client, server.endpoint())
    assert resp.headers["x-big"] == filler.decode()


@pytest.mark.parametrize("terminated", [True, False])
async def test_head_larger_than_the_limit(
    raw_server: RawFactory, client: HTTPClient, terminated: bool
) -> None:
    # Unterminated: the server then waits; the client must give up on size, not on EOF.
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * MAX_HEADER_BYTES
    server = await raw_server(answer(big + (b"\r\n\r\n" if terminated else b"")))
    started = time.monotonic()
    with pytest.raises(HTTPError) as error:
        await post(client, server.endpoint())
    assert time.monotonic() - started < 1
    assert await closed_by_client(server.peers[0]), error.value


@pytest.mark.parametrize(
    "partial", [b"", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"]
)
async def test_connection_closed_before_the_response(
    raw_server: RawFactory, client: HTTPClient, partial: bytes
) -> None:
    server = await raw_server(answer(partial, close=True))
    with pytest.raises(HTTPError):
        await post(client, server.endpoint())


async def test_connection_closed_without_reading_the_request(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    async def slam(peer: Peer) -> None:
        peer.writer.transport.abort()  # RST

    server = await raw_server(slam)
    with pytest.raises((HTTPError, ConnectionError)):
        await post(client, server.endpoint(), b"x" * 100_000)


def _truncations(head: bytes, body: bytes) -> Handler:
    """Per request (its body is a length), send `head` and that much of `body`, then close."""

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(head + body[: int(body_of(request))])

    return handler


async def test_connection_closed_inside_a_content_length_body(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    body = b"0123456789"
    server = await raw_server(_truncations(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", body))
    for cut in range(len(body)):
        resp = await post(client, server.endpoint(), str(cut).encode())
        received, error = await read_until_error(resp)
        assert isinstance(error, HTTPError)
        assert b"".join(received) == body[:cut]
        resp.release()
    assert server.connections == len(body)


async def test_connection_closed_inside_a_chunked_body(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    # Every proper prefix of a chunked body, the final CRLF included, must end in an error,
    # never in a clean end of body.
    server = await raw_server(_truncations(CHUNKED_HEAD, CHUNKED_BODY))
    for cut in range(len(CHUNKED_BODY)):
        resp = await post(client, server.endpoint(), str(cut).encode())
        received, error = await read_until_error(resp)
        assert isinstance(error, HTTPError), f"cut at {cut}: {CHUNKED_BODY[:cut]!r}"
        assert CHUNKED_DECODED.startswith(b"".join(received))
        resp.release()


@pytest.mark.parametrize(
    "size_line",
    [
        b"zz",
        b"",
        b";ext",
        b"5 5",
        b"1" * (MAX_HEADER_BYTES + 10),
        pytest.param(
            b"-5",
            id="negative",
        ),
        pytest.param(
            b"+5",
            id="plus",
        ),
        pytest.param(
            b"0x5",
            id="0x-prefix",
        ),
        pytest.param(
            b"0_5",
            id="underscore",
        ),
    ],
)
async def test_bad_chunk_size(raw_server: RawFactory, client: HTTPClient, size_line: bytes) -> None:
    # The server closes after the body, so a lenient client ends with an EOF error too: what
    # is checked is that no byte is delivered before the error.
    body = size_line + b"\r\nhello\r\n0\r\n\r\n"
    server = await raw_server(answer(CHUNKED_HEAD + body, close=True))
    resp = await post(client, server.endpoint())
    received, error = await read_until_error(resp)
    assert (received, isinstance(error, HTTPError)) == ([], True)
    resp.release()


async def test_chunk_data_not_followed_by_crlf(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(CHUNKED_HEAD + b"5\r\nhelloXX0\r\n\r\n"))
    resp = await post(client, server.endpoint())
    with pytest.raises(HTTPError):
        await read_pieces(resp)
    resp.release()


async def test_connection_refused_raises_oserror(client: HTTPClient) -> None:
    # A bound socket that does not listen answers SYN with RST on loopback.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await post(client, Endpoint.parse(f"http://127.0.0.1:{port}/"))


async def test_connect_timeout(client: HTTPClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A black-holed SYN cannot be made reliably on loopback; a connect that never completes
    # stands in for it.
    async def never(*args: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    monkeypatch.setattr(asyncio, "open_connection", never)
    started = time.monotonic()
    with pytest.raises(HTTPError):
        await client.post(Endpoint.parse("http://127.0.0.1:9/"), b"", {}, connect_timeout_s=0.05)
    assert time.monotonic() - started < 1


async def test_cancelled_request_closes_its_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.request()  # None when the client closes; it never sends a second request

    server = await raw_server(silent)
    with pytest.raises(TimeoutError) as error:
        async with asyncio.timeout(0.05):
            await client.post(server.endpoint(), b"", {}, connect_timeout_s=1)
    assert await closed_by_client(server.peers[0]), error.value


async def test_unencodable_request_leaks_no_connection(
    raw_server: RawFactory, client: HTTPClient
) -> None:
    server = await raw_server(answer(OK_EMPTY))
    await fetch(client, server.endpoint())  # a pooled connection for the bad request to take
    with pytest.raises((ValueError, HTTPError)) as info:
        await post(client, server.endpoint(), headers={"X-Name": "snow \u2603"})
    await client.close()  # closes what is pooled; nothing else may still be open
    assert all([await closed_by_client(peer, 0.3) for peer in server.peers])
    del info  # the exception kept the leaked connection alive until here


async def test_header_injection_is_refused(raw_server: RawFactory, client: HTTPClient) -> None:
    server = await raw_server(answer(OK_EMPTY))
    with pytest.raises((ValueError, HTTPError)):
        await post(client, server.endpoint(), headers={"Authorization": "t\r\nX-Injected: 1"})
    await client.close()
    assert [peer.requests for peer in server.peers] in ([], [[]])


# ---- against an aiohttp server -----------------------------------------------------------


@dataclass
class Seen:
    """What the aiohttp server received."""

    requests: list[tuple[str, str, CIMultiDict[str], bytes]] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)


def echo_app(seen: Seen) -> web.Application:
    """POST /echo answers the body back (status from ?status=) with a repeated header;
    POST /stream answers three SSE events as separate chunks."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.requests.append((request.method, request.path_qs, CIMultiDict(request.headers), body))
        assert request.transport is not None
        seen.peers.append(request.transport.get_extra_info("peername"))
        headers = CIMultiDict([("X-Rep", "a"), ("X-Rep", "b"), ("Content-Type", "app/x")])
        return web.Response(
            body=body, status=int(request.query.get("status", "200")), headers=headers
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for n in range(3):
            await resp.write(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    return app


async def test_aiohttp_server_round_trip(aiohttp_server: AiohttpServer, client: HTTPClient) -> None:
    seen = Seen()
    server = await aiohttp_server(echo_app(seen))
    body = bytes(range(256)) * 2048  # 512 KiB, every byte value
    resp, data = await fetch(
        client,
        Endpoint.parse(str(server.make_url("/echo?status=201&q=%C3%A9"))),
        body,
        {"Content-Type": "application/octet-stream", "Authorization": "Bearer k"},
    )
    assert (resp.status, data) == (201, body)
    assert resp.headers["x-rep"] == "a, b"
    assert resp.content_type == "app/x"
    [(method, path_qs, headers, received)] = seen.requests
    assert (method, path_qs, received) == ("POST", "/echo?status=201&q=%C3%A9", body)
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Authorization"] == "Bearer k"
    assert headers["User-Agent"] == USER_AGENT


async def test_aiohttp_server_keep_alive(aiohttp_server: AiohttpServer, client: HTTPClient) -> None:
    seen = Seen()
    server = await aiohttp_server(echo_app(seen))
    echo = Endpoint.parse(str(server.make_url("/echo")))
    stream = Endpoint.parse(str(server.make_url("/stream")))
    results = [await fetch(client, e, b"x") for e in (echo, stream, echo, stream, echo)]
    assert [data for _, data in results] == [b"x", b"data: 0\n\ndata: 1\n\ndata: 2\n\n"] * 2 + [
        b"x"
    ]
    assert len(set(seen.peers)) == 1


async def test_aiohttp_chunked_pieces_arrive_as_written(
    aiohttp_server: AiohttpServer, client: HTTPClient
) -> None:
    server = await aiohttp_server(echo_app(Seen()))
    resp = await post(client, Endpoint.parse(str(server.make_url("/stream"))))
    assert resp.headers["transfer-encoding"] == "chunked"
    assert await read_pieces(resp) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    resp.release()


async def test_aiohttp_error_status(aiohttp_server: AiohttpServer, client: HTTPClient) -> None:
    server = await aiohttp_server(echo_app(Seen()))
    resp, data = await fetch(client, Endpoint.parse(str(server.make_url("/missing"))))
    assert resp.status == 404
    assert resp.content_type == "text/plain"
    assert data == b"404: Not Found"


# ---- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def make_cert(tmp_path_factory: pytest.TempPathFactory, names: str) -> Cert:
    """A self-signed certificate for `names` (a subjectAltName list), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        warnings.warn(
            "openssl CLI not found: the TLS tests of bridges.http did not run", stacklevel=1
        )
        pytest.skip("openssl CLI not found: TLS tests of bridges.http not run")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=voice-relay test",
            "-addext",
            f"subjectAltName={names}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Cert(cert, key)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory, "DNS:localhost,IP:127.0.0.1")


@pytest.fixture(scope="session")
def other_cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory, "DNS:other.example")


def server_context(cert: Cert, sni: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert, cert.key)

    def record(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    ctx.sni_callback = record
    return ctx


@pytest.mark.parametrize(
    ("host", "expected_sni"), [("localhost", "localhost"), ("127.0.0.1", None)]
)
async def test_https_request(
    aiohttp_server: AiohttpServer, tls_cert: Cert, host: str, expected_sni: str | None
) -> None:
    seen = Seen()
    sni: list[str | None] = []
    server = await aiohttp_server(echo_app(seen), ssl=server_context(tls_cert, sni))
    trusting = ssl.create_default_context(cafile=str(tls_cert.cert))
    assert trusting.check_hostname
    http = HTTPClient(ssl_context=trusting)
    try:
        endpoint = Endpoint.parse(f"https://{host}:{server.port}/echo")
        for n in range(2):
            resp, data = await fetch(http, endpoint, f"secret {n}".encode())
            assert (resp.status, data) == (200, f"secret {n}".encode())
    finally:
        await http.close()
    assert sni == [expected_sni]  # one handshake: the second request reused the connection
    assert seen.requests[0][2]["Host"] == f"{host}:{server.port}"
    assert len(set(seen.peers)) == 1


async def test_https_untrusted_certificate_is_refused(
    aiohttp_server: AiohttpServer, tls_cert: Cert
) -> None:
    server = await aiohttp_server(echo_app(Seen()), ssl=server_context(tls_cert, []))
    http = HTTPClient()  # the system trust store does not know the test certificate
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await post(http, Endpoint.parse(f"https://127.0.0.1:{server.port}/echo"))
    finally:
        await http.close()


async def test_https_certificate_for_another_name_is_refused(
    aiohttp_server: AiohttpServer, other_cert: Cert
) -> None:
    # Trusted, but issued to another name: only a hostname check refuses it.
    server = await aiohttp_server(echo_app(Seen()), ssl=server_context(other_cert, []))
    http = HTTPClient(ssl_context=ssl.create_default_context(cafile=str(other_cert.cert)))
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await post(http, Endpoint.parse(f"https://127.0.0.1:{server.port}/echo"))
    finally:
        await http.close()
