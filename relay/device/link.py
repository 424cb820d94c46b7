"""Device links: where a session's messages go. A WebSocket is one kind, the simulate SSE
stream another (relay.device.sse_link), so both run the very same Session and Turn code."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from aiohttp import web

from aioutil import cancel_and_wait
from metrics.registry import Metrics
from protocol import websocket
from protocol.binary import encode_frame
from protocol.errors import CloseCode
from protocol.play_clock import Pacer
from protocol.websocket import FIN_BINARY, FIN_TEXT

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
AUDIO: Final = 0
TEXT: Final = 1
_HELD: Final = 2  # text held until the audio before it plays (docs/protocol.md §1.6)
NOTE: Final = 3  # a diagnostic for whoever reads a simulate stream; devices get none
# The pacer aims this far under §1.6's bound: the device's clock starts when the first frame
# arrives, so a first frame delivered a little late (a busy network or device) would
# otherwise show as lead above the bound. 5 ms of a 1 s buffer costs nothing audible.
PACING_MARGIN_S = 0.005
_HIGH_WATER = 64 * 1024  # bytes a device may leave unread in our socket buffer before writes wait
_DRAIN_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Held:
    """Text messages (bytes, device message type) that go out when the device starts playing
    the audio frame queued right after them: a caption shows as its sentence is heard."""

    messages: tuple[tuple[bytes, str], ...]


Item = tuple[int, bytes | Held]  # an outbox entry: (AUDIO | TEXT, bytes) or (_HELD, Held)


class Link:
    """A bounded outbox drained by a writer task; a peer that cannot keep up is closed.

    A message goes straight to the peer when nothing is waiting before it and the peer can
    take it without blocking (`_write_now`); only a backlog starts the writer task, so an idle
    device holds no task and no queue (docs/performance.md: idle memory per device), and a
    paced answer costs no task per frame.
    """

    source: ClassVar[str] = "device"  # the `source` label of a turn's business metrics

    def __init__(
        self, session_id: str, metrics: Metrics, outbox_max: int, frame_s: float, lead_s: float
    ) -> None:
        self.session_id = session_id
        self.pacer = Pacer(frame_s, max(0.0, lead_s - PACING_MARGIN_S))
        self._metrics = metrics
        self._audio_out = (
            metrics.audio_frames.labels("out"),
            metrics.message_bytes.labels("audio", "out"),
        )
        self._max = outbox_max
        self._pending: deque[Item] = deque()
        self._queued_audio = 0  # audio frames in `_pending`
        self._held: set[asyncio.TimerHandle] = set()  # held text waiting for its play time
        self._last_due = 0.0  # held messages go out in the order they were queued
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
        self._count_out(msg, mtype)
        self._put([(TEXT, msg)], 0)

    def diagnose(self, note: bytes) -> None:
        """A diagnostic (JSON) for a person reading this link; a device link drops it."""

    async def room(self) -> None:
        """Return when the outbox can take more. A device link returns at once: a device
        that stops reading fills its bounded outbox and is closed (1013, docs/protocol.md
        §1.7). A link that makes its producer wait instead overrides this."""

    def _count_out(self, msg: bytes, mtype: str) -> None:
        count, size = self._metrics.message_counters(mtype, "out")
        count.inc()
        size.inc(len(msg))

    async def paced_audio(self, frames: Sequence[bytes], held: Held | None = None) -> None:
        """Send audio frames as the pacer allows (docs/protocol.md §1.6): as many at once as the
        device's buffer has room for (one write for a whole start-up burst), then each when
        its turn comes. Framing for the device's version happens at write time. `held` goes
        out when the first of `frames` starts playing at the device (§1.6, the play clock)."""
        loop = asyncio.get_running_loop()
        count, size = self._audio_out
        i, n = 0, len(frames)
        if held is not None and n == 0:
            self._put([(_HELD, held)], 0)
        while i < n and not self._closed:
            now = loop.time()
            k = min(n - i, self.pacer.allowed(now, self._queued_audio))
            if k == 0:
                await asyncio.sleep(self.pacer.delay(now, self._queued_audio))
                continue
            batch = frames[i : i + k]
            items: list[Item] = [(AUDIO, f) for f in batch]
            if i == 0 and held is not None:
                items.insert(0, (_HELD, held))
            i += k
            count.inc(k)
            size.inc(sum(map(len, batch)))
            self._put(items, k)

    async def played(self, margin_s: float) -> None:
        """Return `margin_s` after every audio frame queued so far has played at the device
        (§1.6), or when the link is closed: `tts stop` goes out then, so a client that
        flushes its playback on `tts stop` hears the whole answer. The device's clock runs
        from each frame's arrival, a little behind the write: the margin covers that."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            if (writer := self._writer) is not None:
                await asyncio.wait([writer])  # queued frames start the clock when written
                continue
            rest = self.pacer.play_end + margin_s - loop.time()
            if rest <= 0:
                return
            await asyncio.sleep(rest)

    def start_answer(self) -> None:
        """A new answer starts (`tts start`): the device plays it from an empty buffer, since
        it flushes what was left of a cut answer, so its clock starts afresh (§1.6)."""
        self.drop_held()
        self.pacer.reset()

    def drop_held(self) -> None:
        """Forget the held text not yet sent (an answer cut off: its captions never play)."""
        for handle in self._held:
            handle.cancel()
        self._held.clear()
        self._last_due = 0.0
        pending = self._pending
        if any(kind == _HELD for kind, _ in pending):
            kept = [item for item in pending if item[0] != _HELD]
            pending.clear()
            pending.extend(kept)

    def _release(self, items: list[Item], now: float) -> list[tuple[int, bytes]]:
        """Items to write now: held text due at once stays in place, later text is timed to
        the play clock. A held group is due when the frame after it starts playing: when
        the frames before it in `items`, written now, have played."""
        out: list[tuple[int, bytes]] = []
        frames = 0
        for kind, data in items:
            if not isinstance(data, Held):
                out.append((kind, data))
                frames += kind == AUDIO
                continue
            due = max(self.pacer.play_start(now, frames), self._last_due)
            self._last_due = due
            if due <= now:
                for msg, mtype in data.messages:
                    self._count_out(msg, mtype)
                    out.append((TEXT, msg))
            else:
                self._hold(data, due)
        return out

    def _hold(self, held: Held, due: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._held.discard(handle)
            for msg, mtype in held.messages:
                self.send_json(msg, mtype)

        handle = loop.call_at(due, fire)
        self._held.add(handle)

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
        self.drop_held()
        self._pending.clear()
        self._queued_audio = 0
        writer, self._writer = self._writer, None
        if writer is not asyncio.current_task():
            await cancel_and_wait(writer)
        await self._close_peer(self.close_code)

    def _put(self, items: list[Item], audio: int) -> None:
        """Write `items` (`audio` of them audio frames) now if possible, else queue them."""
        if self._closed:
            return
        pending = self._pending
        if not pending and self._writer is None:
            try:
                if self._write_now(items, audio):
                    return
            except (ConnectionError, RuntimeError) as exc:
                self._write_failed(exc)
                return
        if len(pending) + len(items) > self._max:
            self._metrics.outbox_overflow.inc()
            log.warning("outbox full for session %s: closing", self.session_id)
            self.request_close(CloseCode.OVER_CAPACITY)
            return
        pending.extend(items)
        self._queued_audio += audio
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _audio_written(self, frames: int) -> None:
        """Account `frames` audio frames as written now (the pacer's clock, the lead metric)."""
        now = asyncio.get_running_loop().time()
        self.pacer.sent(now, frames)
        self._metrics.pacing_lead.observe(self.pacer.lead(now))

    def _write_failed(self, exc: BaseException) -> None:
        log.info("write to %s failed: %s", self.session_id, type(exc).__name__)
        self.request_close(CloseCode.GOING_AWAY)

    async def _write_loop(self) -> None:
        pending = self._pending
        try:
            while pending:
                items = list(pending)
                pending.clear()
                audio = self._queued_audio  # every queued frame is in `items`
                await self._write_items(items, audio)
                # Written frames leave the queue count together with `_audio_written`:
                # no await in between, so the pacer never sees a frame twice or not at all.
                self._queued_audio -= audio
                del items  # orjson output sits in a 4 KiB buffer: do not keep it alive
        except (ConnectionError, RuntimeError) as exc:
            self._write_failed(exc)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    def _write_now(self, items: list[Item], audio: int) -> bool:
        """Write `items` without waiting if the peer can take them; False to queue them."""
        return False

    async def _write_items(self, items: list[Item], audio: int) -> None:
        """Write `items` in order, waiting for the peer as needed."""
        raise NotImplementedError

    async def _close_peer(self, code: int) -> None:
        raise NotImplementedError


class WebSocketLink(Link):
    """A device WebSocket; audio framed per the handshake's protocol version (§1.4).

    Frames are built here (protocol.websocket) and handed to the transport in one write per
    batch. The transport's buffer is the flow control: past
    `_HIGH_WATER` bytes, writes wait for the device to read.
    """

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

    def _frame(self, kind: int, data: bytes) -> bytes:
        if kind == AUDIO:
            ts = int((time.monotonic() - self._start) * 1000)
            return websocket.frame(FIN_BINARY, encode_frame(self._version, data, timestamp_ms=ts))
        return websocket.frame(FIN_TEXT, data)

    def _ready(self, transport: asyncio.Transport | None) -> bool:
        """Whether the transport takes a write now; raises once the socket is closing."""
        if transport is None or self._ws.closed or transport.is_closing():
            raise ConnectionResetError("the WebSocket is closing")
        return transport.get_write_buffer_size() <= _HIGH_WATER

    def _send(self, transport: asyncio.Transport, items: list[Item], audio: int) -> None:
        frame = self._frame
        if len(items) == 1 and not isinstance(data := items[0][1], Held):
            transport.write(frame(items[0][0], data))
        else:
            ready = self._release(items, asyncio.get_running_loop().time())
            transport.write(b"".join([frame(kind, data) for kind, data in ready]))
        if audio:
            self._audio_written(audio)

    def _write_now(self, items: list[Item], audio: int) -> bool:
        transport = self._transport
        if not self._ready(transport):
            return False
        assert transport is not None  # _ready raised otherwise
        self._send(transport, items, audio)
        return True

    async def _write_items(self, items: list[Item], audio: int) -> None:
        transport = self._transport
        # aiohttp exposes no public drain for its transport; polling costs only while this
        # device leaves 64 KiB unread, and the bounded outbox closes it if that lasts.
        while not self._ready(transport):  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_S)
        assert transport is not None
        self._send(transport, items, audio)

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
