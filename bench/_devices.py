"""The load generator's devices: the client session, the hello handshake, connecting and
closing many at a time. What a device says after its hello is each benchmark's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import WSMsgType

T = TypeVar("T")
# The uplink a voice device declares: Opus, 16 kHz mono, 60 ms packets (§1.2).
AUDIO_PARAMS = {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}


def voice_hello(version: int = 1, **audio_params: int) -> bytes:
    """A voice device's hello message (§1.2): AUDIO_PARAMS, plus `audio_params`."""
    return orjson.dumps(
        {
            "type": "hello",
            "version": version,
            "transport": "websocket",
            "audio_params": AUDIO_PARAMS | audio_params,
        }
    )


def unlimited_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A client session without aiohttp's cap on connections: every device its own socket."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def mac(*octets: int) -> str:
    """A MAC-form Device-Id header (§1.1), e.g. 02:10:00:00:00:2A."""
    return ":".join(f"{b:02X}" for b in octets)


async def say_hello(
    http: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    hello: bytes,
    timeout_s: float = 30.0,
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Handshake with `headers` (§1.1), send `hello`, wait for the hello reply (§1.2); the
    socket and the reply."""
    ws = await http.ws_connect(url, headers=headers)
    await ws.send_frame(hello, WSMsgType.TEXT)
    async with asyncio.timeout(timeout_s):
        msg = await ws.receive()
    if msg.type != WSMsgType.TEXT:
        raise RuntimeError(f"device {headers.get('Device-Id')}: no hello reply ({msg.type!r})")
    reply = orjson.loads(msg.data)
    if not isinstance(reply, dict) or reply.get("type") != "hello":
        raise RuntimeError(f"device {headers.get('Device-Id')}: bad hello reply {reply!r}")
    return ws, reply


async def in_batches(
    make: Callable[[int], Awaitable[T]], n: int, batch: int, into: list[T] | None = None
) -> list[T]:
    """`make(0)` … `make(n - 1)`, `batch` at a time concurrently, appended to `into` (or a new
    list) batch by batch, so a caller's cleanup sees what was made before a failure."""
    out: list[T] = [] if into is None else into
    for start in range(0, n, batch):
        out += await asyncio.gather(*(make(i) for i in range(start, min(n, start + batch))))
    return out


async def close_in_batches(sockets: Sequence[aiohttp.ClientWebSocketResponse], batch: int) -> None:
    """Close `sockets`, `batch` at a time, whatever each close raises."""
    for start in range(0, len(sockets), batch):
        chunk = sockets[start : start + batch]
        await asyncio.gather(*(ws.close() for ws in chunk), return_exceptions=True)
