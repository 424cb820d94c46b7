"""Helpers for end-to-end voice tests: espeak-ng speech made offline, uplink packets (Opus or
PCM) sent paced over the device WebSocket, and an ordered log of what the device receives."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import opuslib_next
import orjson
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from asr_tts.codec import OpusDecoder, pcm_from_wav, resample
from protocol.binary import FrameType, decode_frame, encode_frame
from protocol.device import ListenMode
from tests.relay.fakes import Device, open_stream, session_of, sse

RATE = 16000
FRAME_SAMPLES = 960  # 60 ms at 16 kHz: one uplink packet (docs/protocol.md §1.4)
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_S = 0.06
# The pocketsphinx command vocabulary for these tests (`asr.grammar_words`).
COMMANDS = ("turn on the light", "turn off the light", "what time is it", "dance", "stop")
PCM_HELLO: dict[str, Any] = {
    "type": "hello",
    "version": 1,
    "transport": "websocket",
    "audio_params": {
        "format": "pcm",
        "sample_rate": RATE,
        "channels": 1,
        "bit_depth": 16,
        "frame_duration": 60,
        "frame_size": FRAME_SAMPLES,
    },
}


class SpeechBank:
    """espeak-ng speech as 16 kHz mono s16le, synthesised once per phrase."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], bytes] = {}

    def say(self, words: str, voice: str = "en-us") -> bytes:
        """`words` spoken at 150 wpm, resampled to 16 kHz (espeak-ng speaks at 22050 Hz)."""
        key = (words, voice)
        if key not in self._cache:
            wav = subprocess.run(
                ["espeak-ng", "--stdout", "-s", "150", "-v", voice, words],
                capture_output=True,
                check=True,
            ).stdout
            self._cache[key] = resample(pcm_from_wav(wav), RATE).samples
        return self._cache[key]


def silence(seconds: float) -> bytes:
    """Digital silence, 16 kHz s16le."""
    return bytes(2 * round(seconds * RATE))


def opus_packets(pcm: bytes) -> list[bytes]:
    """`pcm` as the device sends it: Opus 16 kHz mono, 60 ms packets, the last one padded."""
    encoder = opuslib_next.Encoder(RATE, 1, opuslib_next.APPLICATION_VOIP)
    return [bytes(encoder.encode(frame, FRAME_SAMPLES)) for frame in pcm_frames(pcm)]


def pcm_frames(pcm: bytes) -> list[bytes]:
    """`pcm` cut in 60 ms s16le frames (1920 bytes), the last one padded with silence."""
    padded = pcm + bytes(-len(pcm) % FRAME_BYTES)
    return [padded[i : i + FRAME_BYTES] for i in range(0, len(padded), FRAME_BYTES)]


def rms(pcm: bytes) -> float:
    """Root mean square of s16le samples (0 for no samples)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


Event = tuple[Literal["text"], dict[str, Any]] | tuple[Literal["audio"], bytes]


def texts_of(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The text messages among logged events."""
    return [item for _kind, item in events if isinstance(item, dict)]


def is_stt(m: dict[str, Any]) -> bool:
    return m.get("type") == "stt"


def is_tts(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("type") == "tts" and m.get("state") == state


@dataclass
class Answer:
    """What the device received for one spoken answer, `tts start` to `tts stop` included."""

    texts: list[dict[str, Any]]
    frames: list[bytes]
    order: list[str]  # "start", "sentence_start", "audio", "stop" as they arrived

    @property
    def captions(self) -> str:
        """The sentence_start texts joined."""
        return " ".join(m["text"] for m in self.texts if m.get("state") == "sentence_start")

    @property
    def aborted(self) -> bool:
        """Whether the closing `tts stop` says the answer was cut."""
        return bool(self.texts[-1].get("is_aborted"))

    def check_spoken(self, fmt: Literal["opus", "pcm"] = "opus") -> None:
        """§1.5: start, a caption before the audio, audible frames, then stop (not aborted)."""
        assert self.order[0] == "start", self.order
        assert self.order[-1] == "stop", self.order
        assert self.order.index("sentence_start") < self.order.index("audio"), self.order
        assert not self.aborted
        assert self.frames, "no answer audio"
        pcm = decode_answer(self.frames, fmt)
        assert rms(pcm) > 100, "the answer is silent"


def decode_answer(frames: Sequence[bytes], fmt: Literal["opus", "pcm"] = "opus") -> bytes:
    """Downlink frames as PCM: Opus at 24 kHz, or raw 16 kHz PCM for a PCM device (§1.2)."""
    if fmt == "pcm":
        for frame in frames:
            assert len(frame) == FRAME_BYTES
        return b"".join(frames)
    decoder = OpusDecoder(24000)
    pcm = [decoder.decode(f) for f in frames]
    for chunk in pcm:
        assert len(chunk) == 1440 * 2  # 60 ms at 24 kHz
    return b"".join(pcm)


def run_queue_wait_s() -> float:
    """Seconds the calling thread has spent runnable but waiting for a core (Linux schedstat;
    0.0 where the kernel does not keep it)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


@dataclass
class VoiceDevice:
    """A device that speaks: listen messages, paced uplink audio, an ordered receive log."""

    dev: Device
    log: list[Event] = field(default_factory=list)
    _seen: int = 0  # log entries already handed out by next_text()

    @classmethod
    async def connect(
        cls,
        client: TestClient[Any, Any],
        *,
        version: int = 1,
        device_id: str = "66:9C:4B:DA:13:EA",
        path: str = "/xiaozhi/v1/",
        headers: dict[str, str] | None = None,
    ) -> VoiceDevice:
        """Connect with an Opus 16 kHz / 60 ms uplink hello (docs/protocol.md §1.2)."""
        dev = await Device.connect(
            client, version=version, device_id=device_id, path=path, headers=headers
        )
        return cls(dev)

    @classmethod
    async def connect_pcm(cls, client: TestClient[Any, Any]) -> VoiceDevice:
        """Connect declaring a raw PCM 16 kHz / 60 ms uplink."""
        return cls(await Device.connect(client, hello=PCM_HELLO))

    @property
    def session_id(self) -> str:
        return self.dev.session_id

    async def send(self, msg: dict[str, Any]) -> None:
        await self.dev.send({"session_id": self.session_id, **msg})

    async def listen(self, mode: ListenMode) -> None:
        await self.send({"type": "listen", "state": "start", "mode": mode})

    async def stop_listening(self) -> None:
        await self.send({"type": "listen", "state": "stop"})

    async def abort(self) -> None:
        await self.send({"type": "abort"})

    async def send_packet(self, payload: bytes) -> None:
        """One uplink audio packet, framed for the connection's protocol version (§1.4)."""
        frame = encode_frame(self.dev.version, payload, FrameType.AUDIO)
        await self.dev.ws.send_bytes(frame)

    async def send_audio(self, packets: Sequence[bytes], speed: float = 1.0) -> None:
        """Send `packets` paced against a monotonic clock at `speed` × real time."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, packet in enumerate(packets):
            due = start + i * FRAME_S / speed
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            await self.send_packet(packet)

    async def _receive(self, timeout: float) -> None:
        msg = await self.dev.ws.receive(timeout=timeout)
        if msg.type == WSMsgType.BINARY:
            frame = decode_frame(self.dev.version, msg.data)
            assert frame.type is FrameType.AUDIO
            self.log.append(("audio", frame.payload))
        elif msg.type == WSMsgType.TEXT:
            self.log.append(("text", orjson.loads(msg.data)))
        else:
            raise AssertionError(f"expected a message, got {msg.type} {msg.data!r}")

    async def next_text(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next text message not handed out yet; audio on the way stays in `log`."""
        async with asyncio.timeout(timeout):
            while True:
                while self._seen < len(self.log):
                    kind, item = self.log[self._seen]
                    self._seen += 1
                    if kind == "text":
                        assert isinstance(item, dict)
                        return item
                await self._receive(timeout)

    async def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Text messages up to and including the first matching `pred`."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while not out or not pred(out[-1]):
                out.append(await self.next_text(timeout))
        return out

    async def answer(self, timeout: float = 15.0) -> Answer:
        """The next answer: everything from the next `tts start` (or stop) to `tts stop`."""
        first = await self.until(lambda m: m.get("type") == "tts", timeout)
        start = self._seen - 1  # the log index of that first tts message
        if first[-1].get("state") != "stop":
            await self.until(is_tts("stop"), timeout)
        texts: list[dict[str, Any]] = []
        frames: list[bytes] = []
        order: list[str] = []
        for kind, item in self.log[start : self._seen]:
            if kind == "audio":
                assert isinstance(item, bytes)
                frames.append(item)
                order.append("audio")
            else:
                assert isinstance(item, dict)
                texts.append(item)
                order.append(str(item.get("state")))
        return Answer(texts, frames, order)

    async def quiet(self, seconds: float) -> list[Event]:
        """Everything that arrives within `seconds` (expected: nothing of note)."""
        before = len(self.log)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                await self._receive(left)
            except TimeoutError:
                break
        return self.log[before:]

    async def ping(self, timeout: float = 5.0) -> float:
        """Seconds from `ping` to its `pong` (other messages on the way are logged), less the
        time this thread, the one loop of the relay and of this device, spent runnable but
        waiting for a core: what other processes took on a loaded machine, not what the relay
        took. A loop held by this process's own work (a decoder in a thread holding the GIL,
        a call that blocks) still counts in full."""
        waited = run_queue_wait_s()
        t0 = time.perf_counter()
        await self.dev.send({"type": "ping"})
        await self.until(lambda m: m.get("type") == "pong", timeout)
        return time.perf_counter() - t0 - (run_queue_wait_s() - waited)


# ---- metrics ----------------------------------------------------------------------------


async def metric(client: TestClient[Any, Any], sample: str) -> float:
    """The value of one sample of GET /metrics, e.g. `relay_x_total{label="v"}`; 0 if absent."""
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def wait_metric(
    client: TestClient[Any, Any], sample: str, at_least: float, timeout: float = 3.0
) -> float:
    """Poll GET /metrics until `sample` reaches `at_least`; its value then."""
    value = 0.0
    try:
        async with asyncio.timeout(timeout):
            while (value := await metric(client, sample)) < at_least:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{sample} = {value}, expected at least {at_least}") from None
    return value


# ---- business scripts -------------------------------------------------------------------


def chat_msgs(bodies: Sequence[bytes]) -> list[str]:
    """The `details.msg` of every chat request the fake business received."""
    out: list[str] = []
    for raw in bodies:
        body = orjson.loads(raw)
        if body.get("type") == "chat":
            out.append(body["details"]["msg"])
    return out


def long_first_answer(text: str) -> Callable[[web.Request, dict[str, Any]], Any]:
    """A business script: the first chat is answered with `text`, later ones echo."""
    calls = 0

    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        answer = text if calls == 1 else f"Echo {body['details']['msg']}."
        sid = session_of(body)
        resp = await open_stream(request)
        event = {"answer": answer}
        await resp.write(
            sse({"event": "message", "type": "chat", "session_id": sid, "details": event})
        )
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    return script


@dataclass
class StallingBusiness:
    """A business script that answers nothing until the client goes away."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        self.entered.set()
        await asyncio.sleep(30)  # cancelled by aiohttp when the relay hangs up
        return resp


@dataclass
class FakeTranscriber:
    """A tiny `/v1/audio/transcriptions` (OpenAI-compatible ASR) answering as `mode` says."""

    mode: Literal["error", "stall", "empty", "ok"] = "ok"
    text: str = "dance"
    hits: int = 0
    languages: list[str | None] = field(default_factory=list)  # each request's, None if absent
    audio: list[bytes] = field(default_factory=list)  # each request's PCM (its WAV's data)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        language = form.get("language")
        self.languages.append(language if isinstance(language, str) else None)
        upload = form.get("file")
        if isinstance(upload, web.FileField):
            self.audio.append(upload.file.read()[44:])  # after wav_from_pcm's header
        self.hits += 1
        if self.mode == "error":
            body = {"error": {"message": "boom", "type": "server_error", "code": None}}
            return web.json_response(body, status=500)
        if self.mode == "stall":
            await asyncio.sleep(30)
        if self.mode == "empty":
            return web.json_response({"text": ""})
        return web.json_response({"text": self.text})
