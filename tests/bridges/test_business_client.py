"""BusinessClient over bridges.http against business peers on loopback (docs/protocol.md §2)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

from bridges.business import BusinessClient, BusinessTarget, Caller, StreamStats
from bridges.http import HTTPClient
from protocol.business import BusinessEvent, chat_request
from protocol.errors import BusinessOutcome

SID = "session-0123456789"
CALLER = Caller("669C4BDA13EA", SID)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat(answer: str) -> dict[str, Any]:
    return {"event": "message", "type": "chat", "session_id": SID, "details": {"answer": answer}}


END = {"event": "message_end", "session_id": SID}


@pytest.fixture
async def business() -> AsyncIterator[BusinessClient]:
    http = HTTPClient()
    yield BusinessClient(http)
    await http.close()


def target(url: str, **kwargs: Any) -> BusinessTarget:
    timeouts = {"connect_timeout_s": 2.0, "first_event_timeout_s": 2.0, "idle_timeout_s": 2.0}
    return BusinessTarget(name="test", url=url, **{**timeouts, **kwargs})


async def collect(
    client: BusinessClient, tgt: BusinessTarget, body: bytes
) -> tuple[list[BusinessEvent], StreamStats]:
    stats = StreamStats()
    events = [event async for event in client.stream(tgt, body, CALLER, SID, stats)]
    return events, stats


async def test_events_are_delivered_as_they_arrive(
    aiohttp_server: AiohttpServer, business: BusinessClient
) -> None:
    # The server writes event 2 only once the test has received event 1: a client that
    # buffered the answer (or waited for its end) would never see event 1 alone.
    first_seen = asyncio.Event()
    requests: list[tuple[CIMultiDict[str], bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append((CIMultiDict(request.headers), await request.read()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(sse(chat("one")))
        async with asyncio.timeout(2):
            await first_seen.wait()
        await resp.write(sse(chat("two"))[:20])  # an event split across chunks
        await resp.write(sse(chat("two"))[20:] + sse(END))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/chat", handler)
    server = await aiohttp_server(app)
    body = chat_request("669C4BDA13EA", "hello", SID, 1640995200000)
    stats = StreamStats()
    seen: list[tuple[bytes, bool]] = []
    tgt = target(str(server.make_url("/chat")), token="t0k3n")
    async for event in business.stream(tgt, body, CALLER, SID, stats):
        seen.append((event.raw, first_seen.is_set()))
        first_seen.set()
    assert seen == [
        (orjson.dumps(chat("one")), False),
        (orjson.dumps(chat("two")), True),
        (orjson.dumps(END), True),
    ]
    assert (stats.outcome, stats.events, stats.failure) == (BusinessOutcome.OK, 3, None)
    [(headers, received)] = requests
    assert received == body
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "text/event-stream"
    assert headers["Authorization"] == "Bearer t0k3n"


async def test_requests_reuse_one_connection(
    aiohttp_server: AiohttpServer, business: BusinessClient
) -> None:
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(chat("hi")) + sse(END))
        await asyncio.sleep(0.01)  # the end of the body comes a moment after message_end
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    tgt = target(str(server.make_url("/")))
    for _ in range(3):
        events, stats = await collect(business, tgt, b"{}")
        assert (len(events), stats.outcome) == (2, BusinessOutcome.OK)
    assert len(peers) == 3
    assert len(set(peers)) == 1


@asynccontextmanager
async def raw_business(response: bytes) -> AsyncIterator[str]:
    """A business that answers every request with `response` bytes; yields its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(response)
            await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nzz\r\n",
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: \xb2\r\n\r\n",
            id="non-ascii-content-length",
        ),
    ],
)
async def test_broken_http_ends_as_unreachable(business: BusinessClient, response: bytes) -> None:
    async with raw_business(response) as url:
        events, stats = await collect(business, target(url), b"{}")
    assert (events, stats.outcome) == ([], BusinessOutcome.UNREACHABLE)


async def test_refused_connection_ends_as_unreachable(business: BusinessClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        events, stats = await collect(business, target(url), b"{}")
    assert (events, stats.outcome) == ([], BusinessOutcome.UNREACHABLE)
