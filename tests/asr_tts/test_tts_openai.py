"""The OpenAI-compatible provider against a local server that speaks OpenAI's speech wire."""

from __future__ import annotations

import asyncio
import io
import math
import socket
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.pcm import Pcm
from asr_tts.tts import openai as tts_openai
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.openai import OpenAITTS
from asr_tts.tts.speaker import Speaker
from protocol.audio_format import AudioFormat

KEY = "sk-test-0123456789"
SECONDS_PER_CHAR = 0.02
BODY_KEYS = {"model", "input", "voice", "response_format", "speed"}
VOICES = {"alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"}


def sine(seconds: float, rate: int = 24000) -> bytes:
    """A 440 Hz tone as s16le samples."""
    t = np.arange(round(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def wav(samples: bytes, rate: int) -> bytes:
    """`samples` in a mono 16-bit WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams((1, 2, rate, 0, "NONE", "not compressed"))
        w.writeframes(samples)
    return buf.getvalue()


def rms(samples: bytes) -> float:
    """Root mean square of s16le samples."""
    x = np.frombuffer(samples, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def openai_error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    """An error answer in OpenAI's documented shape."""
    error = {"message": message, "type": kind, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


@dataclass
class FakeOpenAI:
    """POST /v1/audio/speech as OpenAI documents it; `mode` makes it misbehave."""

    mode: str = "ok"
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        """The fake as an aiohttp app."""
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.speech)
        return app

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """Check the request like the real server would, then answer per `mode`."""
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {KEY}":
            # The real server masks the key; echo it whole to prove the client redacts it.
            return openai_error(
                401, f"Incorrect API key provided: {auth[7:]}.", "invalid_request_error",
                "invalid_api_key",
            )  # fmt: skip
        if request.content_type != "application/json":
            return openai_error(400, "expected JSON", "invalid_request_error", None)
        body = await request.json()
        problem = self.problem(body)
        if problem:
            return openai_error(400, problem, "invalid_request_error", None)
        self.bodies.append(body)
        if self.mode == "stall":
            await asyncio.sleep(10)
        if self.mode == "server_error":
            return openai_error(500, "The server had an error.", "server_error", None)
        if self.mode == "json":
            return web.json_response({"audio": "where?"})
        if self.mode == "odd":
            return web.Response(body=b"\x01\x02\x03", content_type="application/octet-stream")
        if self.mode == "wav":
            return web.Response(body=wav(sine(0.5, 16000), 16000), content_type="audio/wav")
        if self.mode == "empty":
            return web.Response(body=b"", content_type="application/octet-stream")
        pcm = sine(len(body["input"]) * SECONDS_PER_CHAR)
        return web.Response(body=pcm, content_type="application/octet-stream")

    @staticmethod
    def problem(body: Any) -> str | None:
        """What is wrong with a request body, or None."""
        if not isinstance(body, dict) or set(body) != BODY_KEYS:
            return f"body keys must be {sorted(BODY_KEYS)}"
        if body["response_format"] != "pcm" or body["model"] != "tts-1":
            return "unexpected model or response_format"
        if not isinstance(body["input"], str) or not body["input"]:
            return "input must be a non-empty string"
        if body["voice"] not in VOICES:
            return f"unknown voice {body['voice']!r}"
        speed = body["speed"]
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            return "speed must be between 0.25 and 4.0"
        return None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def fake() -> FakeOpenAI:
    """A well-behaved fake until a test changes its mode."""
    return FakeOpenAI()


@pytest.fixture
async def base_url(fake: FakeOpenAI, aiohttp_server: AiohttpServer) -> str:
    """Where the fake listens."""
    server = await aiohttp_server(fake.app())
    return str(server.make_url("")).rstrip("/")


def provider(base_url: str, session: aiohttp.ClientSession, **kwargs: Any) -> OpenAITTS:
    """An OpenAITTS with the right key unless told otherwise."""
    kwargs.setdefault("api_key", KEY)
    return OpenAITTS(base_url, session=session, **kwargs)


async def test_speech_is_24khz_pcm_as_long_as_the_server_sent(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    text = "Hello there, friend."
    pcm = await provider(base_url, session).synthesize(text, Voice())
    assert pcm.sample_rate == 24000
    assert len(pcm.samples) == len(sine(len(text) * SECONDS_PER_CHAR))
    assert math.isclose(pcm.duration_s, len(text) * SECONDS_PER_CHAR, abs_tol=1e-3)
    assert rms(pcm.samples) > 5000
    assert fake.bodies == [
        {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm", "speed": 1.0}
    ]


async def test_voice_and_speed_reach_the_wire(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    tts = provider(base_url, session, default_voice="echo")
    await tts.synthesize("one", Voice(provider="openai", voice_type="nova", speed_ratio=1.5))
    await tts.synthesize("two", Voice(speed_ratio=0.8, pitch_ratio=2.0))
    assert [(b["voice"], b["speed"]) for b in fake.bodies] == [("nova", 1.5), ("echo", 0.8)]


@pytest.mark.parametrize(
    ("ratio", "sent"), [(10.0, 4.0), (0.1, 0.25), (float("nan"), 1.0), (float("inf"), 1.0)]
)
async def test_speed_is_clamped_to_the_documented_range(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI, ratio: float, sent: float
) -> None:
    await provider(base_url, session).synthesize("hi", Voice(speed_ratio=ratio))
    assert fake.bodies[0]["speed"] == sent


async def test_a_base_url_ending_in_v1_is_not_doubled(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    await provider(base_url + "/v1/", session).synthesize("hi", Voice())
    assert len(fake.bodies) == 1


async def test_a_wrong_key_fails_without_logging_the_key(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    wrong = "sk-wrong-secret-987"
    with pytest.raises(TTSError, match="HTTP 401 invalid_request_error/invalid_api_key") as info:
        await provider(base_url, session, api_key=wrong).synthesize("hi", Voice())
    assert info.value.reason == "auth"
    assert wrong not in str(info.value)
    assert "***" in str(info.value)
    assert fake.bodies == []


async def test_a_request_the_server_rejects_is_an_error(
    base_url: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(TTSError, match="HTTP 400.*unknown voice 'robot'"):
        await provider(base_url, session).synthesize("hi", Voice(voice_type="robot"))


async def test_a_server_error_is_an_error(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "server_error"
    with pytest.raises(TTSError, match="HTTP 500 server_error: The server had an error") as info:
        await provider(base_url, session).synthesize("hi", Voice())
    assert info.value.reason == "refused"


@pytest.mark.parametrize(
    ("mode", "match"), [("json", "JSON answer"), ("odd", "3 bytes"), ("empty", "0 bytes")]
)
async def test_a_malformed_answer_is_an_error(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI, mode: str, match: str
) -> None:
    fake.mode = mode
    with pytest.raises(TTSError, match=match) as info:
        await provider(base_url, session).synthesize("hi", Voice())
    assert info.value.reason == "bad_answer"


async def test_a_wav_answer_is_read_at_its_own_rate(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "wav"
    pcm = await provider(base_url, session).synthesize("hi", Voice())
    assert pcm == Pcm(sine(0.5, 16000), 16000)


async def test_an_answer_past_the_size_cap_is_an_error(
    base_url: str, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tts_openai, "MAX_AUDIO_BYTES", 1000)
    with pytest.raises(TTSError, match="exceeds 1000"):
        await provider(base_url, session).synthesize("a long enough sentence", Voice())


async def test_a_stalled_server_times_out(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "stall"
    started = time.monotonic()
    with pytest.raises(TTSError, match="no answer within 0.2 s") as info:
        await provider(base_url, session, timeout_s=0.2).synthesize("hi", Voice())
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 2


async def test_an_unreachable_server_is_an_error(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TTSError, match="ClientConnectorError") as info:
        await provider(f"http://127.0.0.1:{port}", session).synthesize("hi", Voice())
    assert info.value.reason == "connection"


async def test_speaker_turns_openai_speech_into_opus(
    base_url: str, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    spk = Speaker({"openai": provider(base_url, session)}, "openai")
    out = [
        item
        async for item in spk.sentences(
            "One. Two!", Voice(), FrameEncoder(AudioFormat(sample_rate=24000))
        )
    ]
    assert [s for s, _ in out] == ["One.", "Two!"]
    decoder = OpusDecoder(24000)
    for _, frames in out:
        assert rms(b"".join(decoder.decode(f) for f in frames)) > 1000
    assert [b["input"] for b in fake.bodies] == ["One.", "Two!"]
