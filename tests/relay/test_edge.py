"""The edge (relay/edge.py), served as `python -m relay serve` serves it: raw sockets on
loopback that never finish a request head, more sockets than the caps allow, a probe while the
relay is full, device WebSockets from another loopback address, unmasked frames, and the log
a malformed head or a client gone mid-body leaves."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web

from protocol.websocket import close_frame
from relay.app import make_app
from relay.config.load import parse
from relay.edge import EDGE_KEY
from relay.resources import RELAY_KEY
from relay.run.server import start
from relay.run.workers import listening_socket
from tests.protocol.test_websocket import client_frame

HOST = "127.0.0.1"
OTHER = "127.0.0.2"  # loopback too on Linux: another client address
HELLO = orjson.dumps(
    {
        "type": "hello",
        "version": 1,
        "transport": "websocket",
        "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1},
    }
)


@dataclass
class Served:
    app: web.Application
    port: int

    def refused(self, reason: str) -> float:
        registry = self.app[RELAY_KEY].metrics.registry
        return registry.get_sample_value("relay_edge_refused_total", {"reason": reason}) or 0.0

    async def open(self, source: str = HOST) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port, local_addr=(source, 0))

    async def get(self, path: str, source: str = HOST) -> tuple[int, bytes]:
        """One request on its own socket; the status and the body."""
        reader, writer = await self.open(source)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n".encode())
        try:
            return parse_response(await asyncio.wait_for(reader.read(), 10))
        finally:
            writer.close()


def parse_response(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@contextlib.asynccontextmanager
async def serving(**server: Any) -> AsyncIterator[Served]:
    app = make_app(parse({"server": {"hello_timeout_s": 5.0, **server}}))
    sock = listening_socket(HOST, 0, reuse_port=False)
    runner, srv = await start(app, sock)
    try:
        yield Served(app, sock.getsockname()[1])
    finally:
        srv.close()
        await runner.cleanup()


async def until_closed(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the relay sends until it closes the socket (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), within_s)
    except ConnectionResetError:
        return b""


# Request heads


async def test_unfinished_heads_are_closed_after_the_head_timeout() -> None:
    async with serving(request_head_timeout_s=0.5) as relay:
        socks = [await relay.open() for _ in range(40)]
        for _reader, writer in socks:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")  # never finished
        start = asyncio.get_running_loop().time()
        answers = await asyncio.gather(*(until_closed(r, 10) for r, _w in socks))
        took = asyncio.get_running_loop().time() - start
        assert took >= 0.4
        assert all(parse_response(a)[0] == 408 for a in answers)
        assert relay.refused("head_timeout") == 40
        assert (await relay.get("/healthz"))[0] == 200  # the relay itself is fine
        for _r, writer in socks:
            writer.close()


async def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline() -> None:
    async with serving(request_head_timeout_s=0.5) as relay:
        reader, writer = await relay.open()
        closed = asyncio.ensure_future(until_closed(reader, 10))
        for byte in b"GET /healthz HTTP/1.1\r\nHost: relay\r\n":  # 3.7 s at 10 bytes/s
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        assert closed.done()  # the deadline counts from the socket's start, not the last byte
        assert parse_response(await closed)[0] == 408
        writer.close()


async def test_a_kept_alive_socket_idles_then_gets_a_new_head_deadline() -> None:
    async with serving(request_head_timeout_s=0.5, keepalive_timeout_s=30) as relay:
        reader, writer = await relay.open()
        request = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"
        writer.write(request)
        assert b"200 OK" in await reader.readuntil(b'"ok"}')
        await asyncio.sleep(1.0)  # idle for twice the head timeout: kept alive
        writer.write(request)
        assert b"200 OK" in await asyncio.wait_for(reader.readuntil(b'"ok"}'), 5)
        writer.write(request[:20])  # the next head starts and stalls
        assert parse_response(await until_closed(reader, 10))[0] == 408
        writer.close()


async def test_a_stalled_body_gets_408_after_the_body_timeout() -> None:
    async with serving(request_body_timeout_s=0.5) as relay:
        reader, writer = await relay.open()
        writer.write(
            b"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: relay\r\nDevice-Id: 66:9c:4b:da:13:ea\r\n"
            b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"application":'
        )
        status, body = parse_response(await until_closed(reader, 10))
        assert status == 408
        assert orjson.loads(body)["errorType"] == "request_timeout"
        assert relay.refused("body_timeout") == 1
        writer.close()


# Caps


async def test_over_the_per_address_cap_a_socket_gets_503_and_another_address_is_served() -> None:
    async with serving(max_http_per_address=3, request_head_timeout_s=30) as relay:
        held = [await relay.open() for _ in range(3)]  # idle sockets, heads not yet sent
        await asyncio.sleep(0.1)
        reader, writer = await relay.open()
        status, body = parse_response(await until_closed(reader, 10))
        assert status == 503
        assert orjson.loads(body)["errorType"] == "over_capacity"
        writer.close()
        assert (await relay.get("/healthz"))[0] == 503  # this address is at its cap
        assert relay.refused("address_cap") == 2
        assert (await relay.get("/healthz", source=OTHER))[0] == 200
        dev_reader, dev_writer = await open_device(relay, source=OTHER)
        assert (await read_frame(dev_reader))["type"] == "hello"
        held[0][1].close()  # one socket of the full address leaves: room again
        await asyncio.sleep(0.1)
        assert (await relay.get("/healthz"))[0] == 200
        for _r, w in [*held[1:], (dev_reader, dev_writer)]:
            w.close()


async def test_device_websockets_leave_the_per_address_count() -> None:
    async with serving(max_http_per_address=2, request_head_timeout_s=30) as relay:
        devices = [await open_device(relay, f"dev-{i}") for i in range(4)]  # 4 > 2
        for reader, _w in devices:
            assert (await read_frame(reader))["type"] == "hello"
        assert (await relay.get("/healthz"))[0] == 200
        assert relay.refused("address_cap") == 0
        for _r, w in devices:
            w.close()


async def test_probes_answer_from_the_reserve_while_the_relay_is_full() -> None:
    async with serving(
        max_connections=4, probe_reserve=2, max_http_per_address=0, request_head_timeout_s=30
    ) as relay:
        held = [await relay.open() for _ in range(4)]
        await asyncio.sleep(0.1)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await relay.get(path))[0] == 200, path
        status, body = await relay.get("/api/v1/devices")
        assert (status, orjson.loads(body)["errorType"]) == (503, "over_capacity")
        assert relay.refused("probe_only") == 1
        held += [await relay.open() for _ in range(2)]  # the reserve taken too
        await asyncio.sleep(0.1)
        assert (await relay.get("/healthz"))[0] == 503
        assert relay.refused("total_cap") == 1
        for _r, w in held:
            w.close()


# Device WebSockets


async def open_device(
    relay: Served, device_id: str = "edge-dev", source: str = HOST, *, first: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand, then the hello (masked, as a client must), unless
    `first` gives other bytes to send with the handshake itself."""
    reader, writer = await relay.open(source)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /xiaozhi/v1/ HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Device-Id: {device_id}\r\nProtocol-Version: 1\r\n\r\n".encode()
        + first
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    if not first:
        writer.write(client_frame(HELLO, first=0x81))
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The JSON in the next server frame (a text frame, unmasked, at most 64 KiB here)."""
    head = await asyncio.wait_for(reader.readexactly(2), 10)
    assert head[0] == 0x81
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return orjson.loads(await reader.readexactly(size))


async def test_an_unmasked_frame_closes_the_websocket_with_1002() -> None:
    async with serving() as relay:
        reader, writer = await open_device(relay)
        assert (await read_frame(reader))["type"] == "hello"
        writer.write(client_frame(b'{"type":"ping"}', masked=False, first=0x81))
        rest = await until_closed(reader, 10)
        assert rest == close_frame(1002)
        assert relay.refused("unmasked_frame") == 1
        registry = relay.app[RELAY_KEY].metrics.registry
        for _ in range(100):  # the handler records the close after the socket is gone
            if registry.get_sample_value("relay_connections_closed_total", {"code": "1002"}):
                break
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("relay_connections_closed_total", {"code": "1002"}) == 1
        writer.close()


async def test_an_unmasked_hello_sent_with_the_handshake_closes_with_1002() -> None:
    async with serving() as relay:
        unmasked_hello = client_frame(HELLO, masked=False, first=0x81)
        reader, writer = await open_device(relay, first=unmasked_hello)
        assert await until_closed(reader, 10) == close_frame(1002)
        writer.close()


async def test_masked_frames_sent_with_the_handshake_are_served() -> None:
    async with serving() as relay:
        ping = client_frame(b'{"type":"ping"}', first=0x81)
        reader, writer = await open_device(relay, first=client_frame(HELLO, first=0x81) + ping)
        assert (await read_frame(reader))["type"] == "hello"
        assert (await read_frame(reader)) == {"type": "pong"}
        writer.close()


# Logs


async def test_malformed_heads_and_clients_gone_mid_body_log_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving() as relay:
        for _ in range(5):
            reader, writer = await relay.open()
            writer.write(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            assert parse_response(await until_closed(reader, 10))[0] == 400
            writer.close()
        assert relay.refused("malformed") == 5
        for path, extra in (
            ("/xiaozhi/ota/", "Device-Id: 66:9c:4b:da:13:ea\r\n"),
            ("/api/v1/simulate", ""),
        ):
            reader, writer = await relay.open()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: relay\r\n{extra}Content-Length: 900\r\n\r\n"
                '{"device_id":'.encode()
            )
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
        for _ in range(250):  # both handlers have seen their client leave
            if sum("cut short" in r.getMessage() for r in caplog.records) == 2:
                break
            await asyncio.sleep(0.02)
    assert sum("cut short" in r.getMessage() for r in caplog.records) == 2
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 5


async def test_a_body_that_does_not_decode_answers_400_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as relay:
        reader, writer = await relay.open()
        writer.write(
            b"POST /api/v1/simulate HTTP/1.1\r\nHost: relay\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: 12\r\n\r\n"
        )
        await asyncio.sleep(0.3)  # the handler is reading the body
        writer.write(b"not gzip at all"[:12])
        status, body = parse_response(await until_closed(reader, 10))
        assert (status, orjson.loads(body)["errorType"]) == (400, "bad_body")
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def test_a_handler_error_still_logs_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(parse({}))
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        app[EDGE_KEY].server_log.exception("Error handling request", exc_info=exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
