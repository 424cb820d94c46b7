"""Device links: where a session's messages go. A WebSocket is one kind, the simulate SSE
stream another, so both run the very same Session and Turn code (ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import orjson
from aiohttp import WSMsgType, web

from metrics.registry import Metrics
from protocol.binary import encode_frame
from protocol.codes import CloseCode

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
_AUDIO: Final = 0
_TEXT: Final = 1


class Pacer:
    """Audio pacing against a monotonic clock (PROTOCOL.md §1.6).

    `play_end` is when the device will have played everything sent so far. A frame may go
    out once the lead (play_end - now) is at most `lead_s`, so the device's queue never holds
    more than `play_buffer_duration` plus one frame.
    """

    def __init__(self, frame_s: float, lead_s: float) -> None:
        self.frame_s = frame_s
        self.lead_s = lead_s
        self._play_end = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next frame may be sent."""
        return max(0.0, self._play_end - self.lead_s - now)

    def sent(self, now: float) -> None:
        """Record that one frame went out at `now`."""
        self._play_end = max(self._play_end, now) + self.frame_s

    def lead(self, now: float) -> float:
        """Audio queued on the device beyond `now`, in seconds."""
        return max(0.0, self._play_end - now)


class Link:
    """A bounded outbox drained by a writer task; a peer that cannot keep up is closed.

    The writer runs only while there is something to write, so an idle device holds no
    task and no queue (docs/performance.md: idle memory per device).
    """

    def __init__(
        self, session_id: str, metrics: Metrics, outbox_max: int, frame_s: float, lead_s: float
    ) -> None:
        self.session_id = session_id
        self.pacer = Pacer(frame_s, lead_s)
        self._metrics = metrics
        self._audio_out = (
            metrics.audio_frames.labels("out"),
            metrics.message_bytes.labels("audio", "out"),
        )
        self._max = outbox_max
        self._pending: deque[tuple[int, bytes]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._closed_event: asyncio.Event | None = None  # made only when someone waits
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        """Whether nothing more will be delivered."""
        return self._closed

    def send_json(self, msg: bytes, mtype: str) -> None:
        """Queue one text message (already serialised) of device message type `mtype`."""
        count, size = self._metrics.message_counters(mtype, "out")
        count.inc()
        size.inc(len(msg))
        self._put((_TEXT, msg))

    def send_audio(self, frame: bytes) -> None:
        """Queue one audio packet; framing for the device's version happens in the writer."""
        count, size = self._audio_out
        count.inc()
        size.inc(len(frame))
        self._put((_AUDIO, frame))

    async def paced_audio(self, frame: bytes) -> None:
        """Wait for the pacer, then queue `frame` (PROTOCOL.md §1.6)."""
        loop = asyncio.get_running_loop()
        delay = self.pacer.delay(loop.time())
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        self.pacer.sent(now)
        self._metrics.pacing_lead.observe(self.pacer.lead(now))
        self.send_audio(frame)

    async def wait_closed(self) -> None:
        """Return when the link is closed."""
        if self._closed:
            return
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
        await self._closed_event.wait()

    async def flush(self, timeout_s: float) -> None:
        """Wait until the outbox has been written, up to `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while (writer := self._writer) is not None:
                    await asyncio.wait([writer])
        except TimeoutError:
            log.info("outbox of %s not flushed in %.1fs", self.session_id, timeout_s)

    def request_close(self, code: int) -> None:
        """Close with `code` from any task, without waiting; the owner then finishes up."""
        if self.close_code is None:
            self.close_code = code
        if not self._closed:
            self._mark_closed()
            self._close_requested()

    def _close_requested(self) -> None:
        """Hook: wake the link's owner (the simulate handler waits on `wait_closed`)."""

    def _mark_closed(self) -> None:
        self._closed = True
        if self._closed_event is not None:
            self._closed_event.set()

    async def close(self, code: int = CloseCode.NORMAL) -> None:
        """Stop the writer and close the peer once."""
        if self.close_code is None:
            self.close_code = code
        self._mark_closed()
        self._pending.clear()
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.wait([writer])
        await self._close_peer(self.close_code)

    def _put(self, item: tuple[int, bytes]) -> None:
        if self._closed:
            return
        if len(self._pending) >= self._max:
            self._metrics.outbox_overflow.inc()
            log.warning("outbox full for session %s: closing", self.session_id)
            self.request_close(CloseCode.OVER_CAPACITY)
            return
        self._pending.append(item)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        pending = self._pending
        try:
            while pending:
                kind, data = pending.popleft()
                await self._write(kind, data)
                del data  # orjson output sits in a 4 KiB buffer: do not keep it alive
        except (ConnectionError, RuntimeError) as exc:
            log.info("write to %s failed: %s", self.session_id, type(exc).__name__)
            self.request_close(CloseCode.GOING_AWAY)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _write(self, kind: int, data: bytes) -> None:
        raise NotImplementedError

    async def _close_peer(self, code: int) -> None:
        raise NotImplementedError


class WebSocketLink(Link):
    """A device WebSocket; audio framed per the handshake's protocol version (§1.4)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        version: int,
        session_id: str,
        metrics: Metrics,
        outbox_max: int,
        frame_s: float,
        lead_s: float,
    ) -> None:
        super().__init__(session_id, metrics, outbox_max, frame_s, lead_s)
        self._ws = ws
        self._transport = transport
        self._version = version
        self._start = time.monotonic()
        self.wake: Callable[[], None] | None = None  # set by the connection's reader

    async def _write(self, kind: int, data: bytes) -> None:
        if kind == _TEXT:
            await self._ws.send_frame(data, WSMsgType.TEXT)
        else:
            ts = int((time.monotonic() - self._start) * 1000)
            await self._ws.send_frame(
                encode_frame(self._version, data, timestamp_ms=ts), WSMsgType.BINARY
            )

    def _close_requested(self) -> None:
        if self.wake is not None:
            self.wake()  # the reader leaves receive() and closes the socket itself

    async def _close_peer(self, code: int) -> None:
        if self._ws.closed:
            return
        try:
            # A device that stopped reading cannot take even the close frame: bound the
            # wait, then drop the transport.
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close(code=code)
        except TimeoutError:
            log.info("close of %s timed out: dropping the connection", self.session_id)
            if self._transport is not None:
                self._transport.abort()


class SSELink(Link):
    """The simulate endpoint: each device message becomes one SSE event (ARCHITECTURE.md)."""

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

    async def _write(self, kind: int, data: bytes) -> None:
        if kind == _TEXT:
            await self._resp.write(b"data: " + data + b"\n\n")
            return
        info: dict[str, object] = {"seq": self._seq, "bytes": len(data)}
        if self._audio_base64:
            info["audio"] = base64.b64encode(data).decode()
        self._seq += 1
        await self._resp.write(b"event: audio\ndata: " + orjson.dumps(info) + b"\n\n")

    async def _close_peer(self, code: int) -> None:
        return None  # the HTTP handler ends the response
