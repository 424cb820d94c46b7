"""The "tencent" TTS provider against a local TextToVoice fake that checks the TC3 signature."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.speaker import Speaker
from asr_tts.tts.tencent import TencentTTS, tencent_speed
from protocol.audio_format import AudioFormat
from tests.asr_tts.fake_tencent import SECRET_ID, SECRET_KEY, FakeTencentTTS, TtsMode, sine
from tests.asr_tts.test_tts_openai import rms


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def fake() -> FakeTencentTTS:
    """A well-behaved fake until a test changes its mode."""
    return FakeTencentTTS()


@pytest.fixture
async def url(fake: FakeTencentTTS, aiohttp_server: AiohttpServer) -> str:
    """The fake's endpoint."""
    server = await aiohttp_server(fake.app())
    return str(server.make_url("/"))


def provider(url: str, session: aiohttp.ClientSession, **kwargs: Any) -> TencentTTS:
    """A TencentTTS with the fake account's keys unless told otherwise."""
    kwargs.setdefault("secret_id", SECRET_ID)
    kwargs.setdefault("secret_key", SECRET_KEY)
    return TencentTTS(url=url, session=session, **kwargs)


async def test_speech_is_16khz_pcm_from_a_signed_documented_request(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    text = "你好，世界。"
    pcm = await provider(url, session, volume=2.5).synthesize(text, Voice())
    assert pcm == Pcm(sine(len(text) * fake.seconds_per_char), 16000)
    assert rms(pcm.samples) > 5000
    (body,) = fake.bodies
    assert {k: v for k, v in body.items() if k != "SessionId"} == {
        "Text": text,
        "VoiceType": 101001,
        "Codec": "pcm",
        "SampleRate": 16000,
        "Speed": 0.0,
        "Volume": 2.5,
    }


async def test_voice_and_speed_reach_the_wire_on_tencents_scale(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    tts = provider(url, session)
    await tts.synthesize("一", Voice("tencent", "101002", 1.2))
    await tts.synthesize("二", Voice(speed_ratio=9.0))
    await tts.synthesize("三", Voice(speed_ratio=float("nan")))
    sent = [(b["VoiceType"], b["Speed"]) for b in fake.bodies]
    assert sent == [(101002, 1.0), (101001, 6.0), (101001, 0.0)]
    assert len({b["SessionId"] for b in fake.bodies}) == 3


@pytest.mark.parametrize(
    ("ratio", "speed"), [(0.1, -2.0), (0.7, -1.5), (0.8, -1.0), (1.35, 1.5), (2.0, 4.0)]
)
def test_speed_ratio_follows_the_documented_points(ratio: float, speed: float) -> None:
    assert tencent_speed(ratio) == speed


async def test_a_wrong_key_fails_with_the_code_and_no_secret(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    with pytest.raises(TTSError, match="HTTP 200 AuthFailure.SignatureFailure") as info:
        await provider(url, session, secret_key="not-the-key").synthesize("hi", Voice())
    assert info.value.reason == "auth"
    assert "not-the-key" not in str(info.value)
    assert fake.bodies == []


async def test_a_voice_type_that_is_not_a_number_is_refused_before_sending(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    with pytest.raises(TTSError, match="voice_type 'BV051_streaming' is not a VoiceType number"):
        await provider(url, session).synthesize("hi", Voice(voice_type="BV051_streaming"))
    with pytest.raises(TTSError, match="InvalidParameterValue: VoiceType"):
        await provider(url, session).synthesize("hi", Voice(voice_type="7"))
    assert fake.bodies == []


@pytest.mark.parametrize(
    ("mode", "match", "reason"),
    [
        ("busy", "HTTP 200 RequestLimitExceeded: request limit exceeded", "rate_limited"),
        ("error", "HTTP 200 InternalError: internal error", "refused"),
        ("html", "HTTP 502 without a JSON Response object", "refused"),
        ("drop", "ClientPayloadError", "connection"),
        ("bad_base64", "not base64", "bad_answer"),
        ("no_audio", "without audio data", "bad_answer"),
        ("odd", "3 bytes is not 16-bit PCM", "bad_answer"),
        ("other_session", "another request", "bad_answer"),
    ],
)
async def test_errors_and_malformed_answers_are_errors(
    url: str,
    session: aiohttp.ClientSession,
    fake: FakeTencentTTS,
    mode: TtsMode,
    match: str,
    reason: str,
) -> None:
    fake.mode = mode
    with pytest.raises(TTSError, match=match) as info:
        await provider(url, session).synthesize("hi", Voice())
    assert info.value.reason == reason


async def test_text_over_the_documented_limit_is_refused_by_the_service(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    with pytest.raises(TTSError, match="InvalidParameterValue: Text must hold 1 to 150") as info:
        await provider(url, session).synthesize("字" * 151, Voice())
    assert info.value.reason == "refused"
    assert fake.problems == ["Text must hold 1 to 150 characters"]


async def test_a_slow_answer_times_out(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    fake.mode, fake.delay_s = "slow", 0.5
    started = time.monotonic()
    with pytest.raises(TTSError, match=r"no answer within 0\.2 s") as info:
        await provider(url, session, timeout_s=0.2).synthesize("hi", Voice())
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 2


async def test_the_business_picks_tencent_by_name(
    url: str, session: aiohttp.ClientSession, fake: FakeTencentTTS
) -> None:
    class Silent:
        name = "embedded"

        async def synthesize(self, text: str, voice: Voice) -> Pcm:
            raise AssertionError("the default provider must not speak")

        async def voice_list(self) -> VoiceList:
            return VoiceList("silent", ())

    spk = Speaker({"embedded": Silent(), "tencent": provider(url, session)}, "embedded")
    voice = Voice(provider="tencent", voice_type="1001", speed_ratio=1.5)
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    out = [item async for item in spk.sentences("第一句。第二句！", voice, encoder)]
    assert [s for s, _ in out] == ["第一句。", "第二句！"]
    decoder = OpusDecoder(24000)
    for _, frames in out:
        assert rms(b"".join(decoder.decode(f) for f in frames)) > 1000
    assert [(b["VoiceType"], b["Speed"]) for b in fake.bodies] == [(1001, 2.0)] * 2
