"""The Volcengine ("huoshan") provider against a local server speaking its documented HTTP wire."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.speaker import Speaker
from asr_tts.tts.volcengine import VolcengineTTS
from protocol.audio_format import AudioFormat
from tests.asr_tts.test_tts_openai import rms, sine, wav

APPID, TOKEN = "1234567", "tok-secret-abc"
VOICES = {"BV001_streaming", "BV051_streaming", "BV700_V2_streaming"}
SECONDS_PER_CHAR = 0.02
KEYS = {
    "app": {"appid", "token", "cluster"},
    "user": {"uid"},
    "audio": {"voice_type", "encoding", "rate", "speed_ratio", "volume_ratio", "pitch_ratio"},
    "request": {"reqid", "text", "text_type", "operation"},
}
RANGES = {"speed_ratio": (0.2, 3.0), "volume_ratio": (0.1, 3.0), "pitch_ratio": (0.1, 3.0)}


def answer(reqid: str, code: int, message: str, status: int = 200, **extra: Any) -> web.Response:
    """A JSON answer in the documented shape."""
    body = {"reqid": reqid, "code": code, "operation": "query", "message": message} | extra
    return web.json_response(body, status=status)


@dataclass
class FakeVolcengine:
    """POST /api/v1/tts as Volcengine documents it; `mode` makes it misbehave."""

    mode: str = "ok"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    reqids: set[str] = field(default_factory=set)

    def app(self) -> web.Application:
        """The fake as an aiohttp app."""
        app = web.Application()
        app.router.add_post("/api/v1/tts", self.tts)
        return app

    async def tts(self, request: web.Request) -> web.StreamResponse:
        """Check the request like the real service would, then answer per `mode`."""
        if request.headers.get("Authorization") != f"Bearer;{TOKEN}":
            msg = "authenticate request: load grant: requested grant not found"
            return answer("", 3001, msg, status=401)
        if request.content_type != "application/json":
            return answer("", 3001, "invalid request", status=400)
        body = await request.json()
        problem = self.problem(body)
        if problem:
            return answer("", 3001, problem, status=400)
        if body["app"]["appid"] != APPID:
            msg = "[resource_id=volc.tts.default] requested resource not granted"
            return answer(body["request"]["reqid"], 3001, msg, status=403)
        reqid, text = body["request"]["reqid"], body["request"]["text"]
        if reqid in self.reqids:
            return answer(reqid, 3006, "duplicated reqid")
        self.reqids.add(reqid)
        self.bodies.append(body)
        if body["audio"]["voice_type"] not in VOICES:
            return answer(reqid, 3050, "voice_type not found")
        return await self.reply(reqid, text, body["audio"]["rate"])

    async def reply(self, reqid: str, text: str, rate: int) -> web.StreamResponse:
        """The answer for a valid request."""
        audio = sine(len(text) * SECONDS_PER_CHAR, rate)
        data = base64.b64encode(audio).decode()
        ms = str(round(len(text) * SECONDS_PER_CHAR * 1000))
        match self.mode:
            case "stall":
                await asyncio.sleep(10)
            case "busy":
                return answer(reqid, 3005, "server busy")
            case "server_error":
                return answer(reqid, 3031, "backend error", status=500)
            case "bad_gateway":
                return web.Response(status=502, text="<html>502 Bad Gateway</html>")
            case "html":
                return web.Response(text="<html>maintenance</html>", content_type="text/html")
            case "bad_base64":
                data = "%%%" + data
            case "no_data":
                data = ""
            case "odd":
                data = base64.b64encode(b"\x01\x02\x03").decode()
            case "wav16k":
                data = base64.b64encode(wav(sine(0.5, 16000), 16000)).decode()
            case "other_reqid":
                reqid = str(uuid.uuid4())
        return answer(reqid, 3000, "Success", sequence=-1, data=data, addition={"duration": ms})

    @staticmethod
    def problem(body: Any) -> str | None:  # noqa: C901 - one check per documented rule
        """What is wrong with a request body (shape, types, documented ranges), or None."""
        if not isinstance(body, dict) or set(body) != set(KEYS):
            return "body must hold app, user, audio, request"
        for part, keys in KEYS.items():
            if not isinstance(body[part], dict) or set(body[part]) != keys:
                return f"{part} must hold {sorted(keys)}"
        app, audio, req = body["app"], body["audio"], body["request"]
        if app["cluster"] != "volcano_tts" or not app["token"] or not body["user"]["uid"]:
            return "cluster, token and uid are required"
        if audio["encoding"] not in ("pcm", "wav", "mp3", "ogg_opus"):
            return "bad encoding"
        if audio["rate"] not in (8000, 16000, 24000):
            return "bad rate"
        for key, (low, high) in RANGES.items():
            value = audio[key]
            if not isinstance(value, int | float) or not low <= value <= high:
                return f"{key} out of range"
        if req["operation"] != "query" or req["text_type"] != "plain":
            return "http supports operation query with plain text"
        if not isinstance(req["text"], str) or not req["text"]:
            return "text is required"
        if len(req["text"].encode()) > 1024:
            return "text too long"
        try:
            uuid.UUID(req["reqid"])
        except (TypeError, ValueError):
            return "reqid must be a UUID"
        return None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def fake() -> FakeVolcengine:
    """A well-behaved fake until a test changes its mode."""
    return FakeVolcengine()


@pytest.fixture
async def url(fake: FakeVolcengine, aiohttp_server: AiohttpServer) -> str:
    """The fake's TTS endpoint."""
    server = await aiohttp_server(fake.app())
    return str(server.make_url("/api/v1/tts"))


def provider(url: str, session: aiohttp.ClientSession, **kwargs: Any) -> VolcengineTTS:
    """A VolcengineTTS with the right credentials unless told otherwise."""
    kwargs.setdefault("appid", APPID)
    kwargs.setdefault("token", TOKEN)
    return VolcengineTTS(url=url, session=session, **kwargs)


async def test_speech_is_24khz_pcm_from_a_documented_request(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    text = "你好，世界。"
    pcm = await provider(url, session).synthesize(text, Voice())
    assert pcm.sample_rate == 24000
    assert pcm.samples == sine(len(text) * SECONDS_PER_CHAR, 24000)
    assert rms(pcm.samples) > 5000
    (body,) = fake.bodies
    assert body["app"] == {"appid": APPID, "token": TOKEN, "cluster": "volcano_tts"}
    assert body["audio"] == {
        "voice_type": "BV001_streaming",
        "encoding": "pcm",
        "rate": 24000,
        "speed_ratio": 1.0,
        "volume_ratio": 1.0,
        "pitch_ratio": 1.0,
    }
    request = {k: body["request"][k] for k in ("text", "text_type", "operation")}
    assert request == {"text": text, "text_type": "plain", "operation": "query"}


async def test_voice_speed_and_pitch_reach_the_wire(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    tts = provider(url, session)
    await tts.synthesize("一", Voice("huoshan", "BV051_streaming", 1.3, 0.8))
    await tts.synthesize("二", Voice(speed_ratio=9.0, pitch_ratio=0.01))
    await tts.synthesize("三", Voice(speed_ratio=float("nan"), pitch_ratio=float("inf")))
    sent = [
        (b["audio"]["voice_type"], b["audio"]["speed_ratio"], b["audio"]["pitch_ratio"])
        for b in fake.bodies
    ]
    assert sent == [
        ("BV051_streaming", 1.3, 0.8),
        ("BV001_streaming", 3.0, 0.1),  # clamped to the documented ranges
        ("BV001_streaming", 1.0, 1.0),
    ]
    assert len(fake.reqids) == 3  # a new reqid every time (the fake answers 3006 to a repeat)


async def test_a_wrong_token_fails_without_logging_it(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    with pytest.raises(TTSError, match="HTTP 401 code 3001: authenticate request") as info:
        await provider(url, session, token="not-the-token").synthesize("hi", Voice())
    assert info.value.reason == "auth"
    assert "not-the-token" not in str(info.value)
    assert fake.bodies == []


async def test_a_missing_grant_or_an_unknown_voice_fails_with_its_code(
    url: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(
        TTSError, match="HTTP 403 code 3001: .*requested resource not granted"
    ) as info:
        await provider(url, session, appid="7654321").synthesize("hi", Voice())
    assert info.value.reason == "auth"
    with pytest.raises(TTSError, match="HTTP 200 code 3050: voice_type not found") as info:
        await provider(url, session).synthesize("hi", Voice(voice_type="BV999_streaming"))
    assert info.value.reason == "refused"


@pytest.mark.parametrize(
    ("mode", "match", "reason"),
    [
        ("busy", "HTTP 200 code 3005: server busy", "refused"),
        ("server_error", "HTTP 500 code 3031: backend error", "refused"),
        ("bad_gateway", "HTTP 502 with a body that is not a JSON object", "refused"),
        ("html", "HTTP 200 with a body that is not a JSON object", "bad_answer"),
        ("bad_base64", "not base64", "bad_answer"),
        ("no_data", "without audio data", "bad_answer"),
        ("odd", "3 bytes is not 16-bit PCM", "bad_answer"),
        ("other_reqid", "another request", "bad_answer"),
    ],
)
async def test_server_errors_and_malformed_answers_are_errors(
    url: str,
    session: aiohttp.ClientSession,
    fake: FakeVolcengine,
    mode: str,
    match: str,
    reason: str,
) -> None:
    fake.mode = mode
    with pytest.raises(TTSError, match=match) as info:
        await provider(url, session).synthesize("hi", Voice())
    assert info.value.reason == reason


async def test_a_wav_answer_is_parsed_with_its_own_rate(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    fake.mode = "wav16k"
    pcm = await provider(url, session).synthesize("hi", Voice())
    assert pcm == Pcm(sine(0.5, 16000), 16000)


async def test_a_stalled_server_times_out(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    fake.mode = "stall"
    started = time.monotonic()
    with pytest.raises(TTSError, match="no answer within 0.2 s") as info:
        await provider(url, session, timeout_s=0.2).synthesize("hi", Voice())
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 2


async def test_the_business_picks_huoshan_by_name(
    url: str, session: aiohttp.ClientSession, fake: FakeVolcengine
) -> None:
    class Silent:
        name = "embedded"

        async def synthesize(self, text: str, voice: Voice) -> Pcm:
            raise AssertionError("the default provider must not speak")

        async def voice_list(self) -> VoiceList:
            raise AssertionError("nothing lists voices here")

    spk = Speaker({"embedded": Silent(), "huoshan": provider(url, session)}, "embedded")
    voice = Voice(provider="huoshan", voice_type="BV700_V2_streaming", speed_ratio=1.2)
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    out = [item async for item in spk.sentences("第一句。第二句！", voice, encoder)]
    assert [s for s, _ in out] == ["第一句。", "第二句！"]
    decoder = OpusDecoder(24000)
    for _, frames in out:
        assert rms(b"".join(decoder.decode(f) for f in frames)) > 1000
    assert [b["audio"]["voice_type"] for b in fake.bodies] == ["BV700_V2_streaming"] * 2
    assert [b["audio"]["speed_ratio"] for b in fake.bodies] == [1.2, 1.2]
