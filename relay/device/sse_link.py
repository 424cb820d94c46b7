"""The simulate endpoint's link: a session's messages as an SSE stream, one event each."""

from __future__ import annotations

import asyncio
import base64
from typing import ClassVar

import orjson
from aiohttp import web

from metrics.registry import Metrics
from relay.device.link import NOTE, TEXT, Item, Link


class SSELink(Link):
    """The simulate endpoint: each device message becomes one SSE event.

    Its client is a program reading a stream to its end, not a device with a small buffer:
    a turn that produces faster than the client reads waits for it (`room`) instead of
    losing the stream when the outbox fills, so the whole answer arrives, its backlog
    bounded by the outbox: at most half of it queued and one batch being written."""

    source: ClassVar[str] = "simulate"  # its turns are counted apart from devices'

    def __init__(
        self,
        resp: web.StreamResponse,
        session_id: str,
        metrics: Metrics,
        outbox_max: int,
        frame_s: float,
        lead_s: float,
        *,
        audio_base64: bool,
    ) -> None:
        super().__init__(session_id, metrics, outbox_max, frame_s, lead_s)
        self._resp = resp
        self._audio_base64 = audio_base64
        self._seq = 0
        self._has_room: asyncio.Event | None = None  # made only when a producer waits

    def diagnose(self, note: bytes) -> None:
        self._put([(NOTE, note)], 0)

    async def room(self) -> None:
        while not self._closed and len(self._pending) >= self._max // 2:
            if self._has_room is None:
                self._has_room = asyncio.Event()
            await self._has_room.wait()

    def _wake_producer(self) -> None:
        if self._has_room is not None:
            self._has_room.set()
            self._has_room = None

    def _mark_closed(self) -> None:
        super()._mark_closed()
        self._wake_producer()

    async def _write_items(self, items: list[Item], audio: int) -> None:
        self._wake_producer()  # the writer took the queue: there is room again
        loop = asyncio.get_running_loop()
        for item in items:
            # One item at a time: each audio frame is accounted as it is written.
            for kind, data in self._release([item], loop.time()):
                await self._write_one(kind, data)

    async def _write_one(self, kind: int, data: bytes) -> None:
        if kind == TEXT:
            await self._resp.write(b"data: " + data + b"\n\n")
            return
        if kind == NOTE:
            await self._resp.write(b"event: diagnostic\ndata: " + data + b"\n\n")
            return
        info: dict[str, object] = {"seq": self._seq, "bytes": len(data)}
        if self._audio_base64:
            info["audio"] = base64.b64encode(data).decode()
        self._seq += 1
        await self._resp.write(b"event: audio\ndata: " + orjson.dumps(info) + b"\n\n")
        self._audio_written(1)

    async def _close_peer(self, code: int) -> None:
        return None  # the HTTP handler ends the response
