"""Fake peers for relay tests: a scriptable business service (a real aiohttp server on
loopback) and a device client speaking the WebSocket protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from protocol.binary import decode_frame

Script = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def sse(obj: Any) -> bytes:
    """One SSE event carrying `obj` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def session_of(body: dict[str, Any]) -> str | None:
    """The session id a business request carries in details.session_id."""
    details = body.get("details")
    sid = details.get("session_id") if isinstance(details, dict) else None
    return sid if isinstance(sid, str) else None


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Start a 200 text/event-stream answer."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def echo_script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Default behaviour: a chat answer for chat, a command echo for anything else."""
    sid = session_of(body)
    resp = await open_stream(request)
    if body.get("type") == "chat":
        msg = body["details"]["msg"]
        await resp.write(
            sse(
                {
                    "event": "message",
                    "type": "chat",
                    "session_id": sid,
                    "details": {"answer": f"Echo {msg}."},
                }
            )
        )
    else:
        await resp.write(
            sse(
                {
                    "event": "message",
                    "type": "command",
                    "session_id": sid,
                    "details": {"echo": body},
                }
            )
        )
    await resp.write(sse({"event": "message_end", "session_id": sid}))
    return resp


@dataclass
class FakeBusiness:
    """Records raw request bodies and answers with the current `script`."""

    script: Script = echo_script
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnects: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        self.headers.append(dict(request.headers))
        try:
            return await self.script(request, orjson.loads(raw))
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/chat", self.handle)
        return app


class Device:
    """A device on the relay's WebSocket: sends hello, collects text and audio."""

    def __init__(self, ws: Any, version: int) -> None:
        self.ws = ws
        self.version = version
        self.session_id = ""
        self.audio: list[bytes] = []
        self.audio_times: list[float] = []
        self.audio_stamps: list[int] = []  # the relay's write time, ms (protocol version 2)

    @classmethod
    async def connect(
        cls,
        client: TestClient[Any, Any],
        *,
        device_id: str = "66:9C:4B:DA:13:EA",
        version: int = 1,
        path: str = "/xiaozhi/v1/",
        headers: dict[str, str] | None = None,
        hello: dict[str, Any] | None = None,
    ) -> Device:
        h = {"Device-Id": device_id, "Client-Id": "c-1", "Protocol-Version": str(version)}
        h.update(headers or {})
        ws = await client.ws_connect(path, headers=h)
        dev = cls(ws, version)
        await dev.send(
            hello
            or {
                "type": "hello",
                "version": version,
                "transport": "websocket",
                "audio_params": {
                    "format": "opus",
                    "sample_rate": 16000,
                    "channels": 1,
                    "frame_duration": 60,
                },
            }
        )
        reply = await dev.recv()
        assert reply["type"] == "hello"
        dev.session_id = reply["session_id"]
        dev.hello = reply
        return dev

    hello: dict[str, Any]

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """Next text message; audio frames met on the way are stored in `audio`."""
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == WSMsgType.BINARY:
                frame = decode_frame(self.version, msg.data)
                self.audio.append(frame.payload)
                self.audio_times.append(loop.time())
                self.audio_stamps.append(frame.timestamp_ms)
                continue
            if msg.type != WSMsgType.TEXT:
                raise AssertionError(f"expected text, got {msg.type} {msg.data!r}")
            result: dict[str, Any] = orjson.loads(msg.data)
            return result

    async def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Messages up to and including the first one matching `pred`."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                m = await self.recv(timeout)
                out.append(m)
                if pred(m):
                    return out


def is_tts_stop(m: dict[str, Any]) -> bool:
    return m.get("type") == "tts" and m.get("state") == "stop"


def is_end(m: dict[str, Any]) -> bool:
    return m.get("type") == "custom" and m["payload"]["business_response"].get("event") in (
        "message_end",
        "error",
    )
