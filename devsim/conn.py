"""The simulated device itself (devsim/cli.py is its command line): opens the WebSocket
like xiaozhi firmware (docs/protocol.md §1.1), exchanges hellos (§1.2), runs one turn and feeds
what arrives into a `Trace` (devsim/work.py), printing every message on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import opuslib_next
import orjson

from aioutil import cancel_and_wait
from asr_tts.codec import OpusDecoder
from devsim import work
from devsim.mcp import DeviceState, ToolServer, firmware_tools
from protocol.audio_format import OPUS_SAMPLE_RATES
from protocol.binary import FrameType, decode_frame, encode_frame
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from devsim.options import Mode, Options

HELLO_TIMEOUT_S = 10.0  # how long the firmware waits for the relay's hello (§1.2)
WAKE_WORD = "你好小智"
WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


class HandshakeFailed(Exception):
    """The relay refused the connection or never completed the hello; `kind` labels it."""

    def __init__(self, kind: str, message: str, body: str = "") -> None:
        super().__init__(message)
        self.kind, self.body = kind, body


def custom_message(session_id: str, payload: bytes) -> bytes:
    """A `custom` message carrying the payload's own bytes (§2.1: forwarded unchanged)."""
    sid = orjson.dumps(session_id)
    body = payload.replace(work.SESSION_PLACEHOLDER, sid[1:-1])
    return b'{"session_id":' + sid + b',"type":"custom","payload":' + body + b"}"


def hello_message(opts: Options) -> dict[str, Any]:
    """The firmware's hello (§1.2): Opus 16 kHz mono 60 ms uplink, or the PCM variant."""
    params: dict[str, Any] = {"format": "opus", "sample_rate": work.RATE, "channels": 1}
    if opts.pcm:
        params |= {"format": "pcm", "bit_depth": 16, "endianness": "little"}
        params |= {"frame_size": work.FRAME_BYTES // 2, "sample_format": "signed_int16"}
    params |= {"frame_duration": work.FRAME_MS, "play_buffer_duration": 1000}
    hello: dict[str, Any] = {"type": "hello", "version": opts.protocol, "transport": "websocket"}
    if opts.mcp:  # a tool server, as the firmware's (docs/protocol.md §3)
        hello["features"] = {"mcp": True}
    return hello | {"audio_params": params}


class Conn:
    """One simulated device on the relay's WebSocket, after the hello exchange."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        version: int,
        hello: dict[str, Any],
        printer: work.Printer,
        *,
        keep_audio: bool = False,
        tools: ToolServer | None = None,
    ) -> None:
        self.ws, self.version, self.hello, self.printer = ws, version, hello, printer
        self.session_id = sid if isinstance(sid := hello.get("session_id"), str) else ""
        # The downlink the relay declared; the firmware's defaults when it says nothing (§1.2).
        ap = ap if isinstance(ap := hello.get("audio_params"), dict) else {}
        self.down_rate = _int(ap.get("sample_rate"), 24000)
        self.down_channels = _int(ap.get("channels"), 1)
        frame_ms = _int(ap.get("frame_duration"), 60)
        printer.frame_s = frame_ms / 1000
        opus = ap.get("format", "opus") != "pcm"
        decodable = not opus or (
            self.down_rate in OPUS_SAMPLE_RATES and self.down_channels in (1, 2)
        )
        self.pcm: bytearray | None = bytearray() if keep_audio and decodable else None
        self._decoder = None
        if self.pcm is not None and opus:
            self._decoder = OpusDecoder(self.down_rate, self.down_channels, frame_ms)
        self.trace: work.Trace | None = None
        self.tools = tools  # the device's MCP tool server (--mcp)
        self._replies: set[asyncio.Task[None]] = set()
        self._closing = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, msg: bytes | dict[str, Any]) -> None:
        """Send one text message (JSON text, or an object to serialise) and print it."""
        data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
        self.printer.line(asyncio.get_running_loop().time(), "> " + data.decode())
        await self.ws.send_str(data.decode())

    async def turn(self, plan: work.Plan, opts: Options, *, grace: float = 0.0) -> work.Trace:
        """Run one turn and wait for its end: `tts stop`, or `message_end` for custom."""
        t = self.trace = work.Trace(plan.kind)
        aborter = None
        if opts.abort_after is not None:
            loop = asyncio.get_running_loop()
            aborter = loop.create_task(self._abort_later(t, opts.abort_after))
        try:
            await self._begin(t, plan, opts)
            await t.done.wait()
            if grace and plan.kind == "custom" and not t.errors:
                await asyncio.sleep(grace)
                if t.speaking:  # the business answered the payload with speech
                    t.done.clear()
                    await t.done.wait()
        finally:
            await cancel_and_wait(aborter)
            self.printer.flush()
        return t

    async def _begin(self, t: work.Trace, plan: work.Plan, opts: Options) -> None:
        loop, sid = asyncio.get_running_loop(), self.session_id
        if plan.kind == "custom":
            await self.send(custom_message(sid, plan.custom))
        elif plan.kind == "text" and plan.typed:  # typed text: a chat turn (§1.3)
            msg = {"state": "detect", "text": plan.text}
            await self.send({"session_id": sid, "type": "listen"} | msg)
        elif plan.kind == "text":  # a wake word with text to speak (§1.3)
            msg = {"state": "detect", "text": WAKE_WORD, "text_response": plan.text}
            await self.send({"session_id": sid, "type": "listen"} | msg)
        elif plan.utterance is not None:
            await self._speak(t, plan.utterance, opts.mode, opts.speed)
            return
        t.t_ref = loop.time()

    async def _speak(self, t: work.Trace, u: work.Utterance, mode: Mode, speed: float) -> None:
        loop, sid = asyncio.get_running_loop(), self.session_id
        await self.send({"session_id": sid, "type": "listen", "state": "start", "mode": mode})
        packets = u.packets if mode != "manual" else u.packets[: u.speech_packets]
        speech = f"{u.speech_packets} frames of speech ({u.speech_packets * work.FRAME_S:.2f} s)"
        silence, size = len(packets) - u.speech_packets, sum(map(len, packets))
        speech += f" + {silence} frames of silence" if silence else ""
        every = f"one per {work.FRAME_MS / speed:g} ms"
        self.printer.line(loop.time(), f"> audio: {speech}, {size} bytes, {every}")
        start = loop.time()
        for i, packet in enumerate(packets):
            if (delay := start + i * work.FRAME_S / speed - loop.time()) > 0:
                await asyncio.sleep(delay)  # paced against the monotonic clock, like a mic
            await self.ws.send_bytes(encode_frame(self.version, packet))
            if self.printer.verbose:
                self.printer.line(loop.time(), f"> audio frame {i}, {len(packet)} bytes")
            if i == u.speech_packets - 1:
                t.t_ref = loop.time()
        if mode == "manual":  # push-to-talk released: the utterance ends here (§1.3)
            await self.send({"session_id": sid, "type": "listen", "state": "stop"})
            t.t_ref = loop.time()

    async def _abort_later(self, t: work.Trace, after: float) -> None:
        await t.started.wait()
        await asyncio.sleep(after)
        if not t.done.is_set():
            t.mark("abort", asyncio.get_running_loop().time())
            # A connection already gone: the reader ends the turn as "closed".
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self.send({"session_id": self.session_id, "type": "abort"})

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data, loop.time())
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(msg.data, loop.time())
                else:
                    break
        finally:
            if not self._closing:
                self.printer.line(loop.time(), f"closed by the relay ({self.ws.close_code})")
            self.printer.flush()
            if (t := self.trace) is not None and not t.done.is_set():
                t.errors.append("closed")
                t.done.set()

    def _on_text(self, data: str | bytes, now: float) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            self._problem(now, "bad_json", f"< (not a JSON object) {str(data)[:200]}")
            return
        if self.printer.stream is not None:  # load mode prints nothing: skip the work
            self.printer.line(now, "< " + orjson.dumps(msg).decode())
        if self.tools is not None and msg.get("type") == "mcp":
            self._answer_mcp(msg.get("payload"))
        if self.trace is not None:
            work.record(self.trace, msg, now)

    def _answer_mcp(self, payload: Any) -> None:
        assert self.tools is not None
        reply = self.tools.handle(payload)
        if reply is None:
            return
        sid = orjson.dumps(self.session_id)
        msg = b'{"session_id":%b,"type":"mcp","payload":%b}' % (sid, reply)
        task = asyncio.get_running_loop().create_task(self.send(msg))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def _on_binary(self, data: bytes, now: float) -> None:
        try:
            frame = decode_frame(self.version, data)
        except ProtocolError:
            self._problem(now, "bad_frame", f"< bad binary frame for protocol {self.version}")
            return
        if frame.type is FrameType.JSON:
            self._on_text(frame.payload, now)
            return
        self.printer.audio(now, len(frame.payload))
        if self.pcm is not None:
            try:
                pcm = self._decoder.decode(frame.payload) if self._decoder else frame.payload
            except opuslib_next.OpusError:
                self._problem(now, "bad_audio", "< undecodable Opus packet")
                pcm = b""
            self.pcm += pcm
        if (t := self.trace) is not None:
            t.mark("first_audio", now)
            t.frames, t.audio_bytes = t.frames + 1, t.audio_bytes + len(frame.payload)

    def _problem(self, now: float, kind: str, text: str) -> None:
        self.printer.line(now, text)
        if self.trace is not None:
            self.trace.errors.append(kind)

    async def close(self) -> None:
        """Close the WebSocket (normal closure) and stop reading."""
        self._closing = True
        await self.ws.close()
        await cancel_and_wait([self._reader, *self._replies])


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


async def connect(
    session: aiohttp.ClientSession,
    opts: Options,
    device_id: str,
    printer: work.Printer,
    *,
    explain: bool = True,
    keep_audio: bool = False,
) -> Conn:
    """Open the WebSocket like the firmware (§1.1) and exchange hellos (§1.2)."""
    loop = asyncio.get_running_loop()
    auth = {"Device-Id": device_id, "Client-Id": str(uuid.uuid4())}
    auth |= {"Protocol-Version": str(opts.protocol)}
    if opts.token:
        auth["Authorization"] = f"Bearer {opts.token}"
    if opts.agent:
        auth["X-Agent-ID"] = opts.agent
    headers, params = auth, {}
    if opts.query_auth:  # browsers cannot set headers: the same fields as a query (§1.1)
        headers, params = {}, {k.lower(): v for k, v in auth.items()}
    how = "query parameters" if opts.query_auth else "headers"
    printer.line(loop.time(), f"connecting to {opts.url} as {device_id} ({how})")
    try:
        ws = await session.ws_connect(opts.url, headers=headers, params=params, timeout=WS_TIMEOUT)
    except aiohttp.WSServerHandshakeError as exc:
        # aiohttp drops the refusal's body; the relay refuses a plain GET the same way.
        body = await _error_body(session, opts.url, headers, params) if explain else ""
        msg = f"the relay refused the WebSocket: HTTP {exc.status}"
        raise HandshakeFailed(f"http_{exc.status}", msg, body) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise HandshakeFailed("connect", f"cannot connect to {opts.url}: {exc}") from exc
    try:
        data = orjson.dumps(hello_message(opts))
        printer.line(loop.time(), "> " + data.decode())
        await ws.send_str(data.decode())
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            hello = await _relay_hello(ws, printer)
    except TimeoutError as exc:
        await ws.close()
        raise HandshakeFailed("no_hello", f"no hello within {HELLO_TIMEOUT_S:g} s") from exc
    except BaseException:
        await ws.close()
        raise
    tools = ToolServer(firmware_tools(DeviceState())) if opts.mcp else None
    return Conn(ws, opts.protocol, hello, printer, keep_audio=keep_audio, tools=tools)


async def _relay_hello(
    ws: aiohttp.ClientWebSocketResponse, printer: work.Printer
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise HandshakeFailed("closed", f"closed before the relay's hello ({ws.close_code})")
        printer.line(loop.time(), "< " + msg.data)
        try:
            obj = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            raise HandshakeFailed("bad_hello", "the relay answered hello with non-JSON") from exc
        if not isinstance(obj, dict) or obj.get("type") != "hello":
            continue
        if obj.get("transport") != "websocket":  # the firmware ignores such a hello (§1.2)
            raise HandshakeFailed("bad_hello", 'the relay\'s hello lacks "transport":"websocket"')
        return obj


async def _error_body(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], params: dict[str, str]
) -> str:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(url, headers=headers, params=params, timeout=timeout) as resp:
            text = (await resp.text(errors="replace"))[:2000]
        return orjson.dumps(orjson.loads(text)).decode()  # compact, like every printed message
    except orjson.JSONDecodeError:
        return text
    except (aiohttp.ClientError, TimeoutError):
        return ""
