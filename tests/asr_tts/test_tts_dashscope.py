"""The "dashscope" TTS provider (CosyVoice) against the local fake of the inference WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.dashscope import DashScopeTTS
from asr_tts.tts.speaker import HEAD_FRAMES, Speaker
from protocol.audio_format import AudioFormat
from tests.asr_tts.fake_dashscope import PATH, SECONDS_PER_CHAR, THROTTLED, FakeDashScope, tone
from tests.asr_tts.test_tts_openai import rms

Make = Callable[..., DashScopeTTS]


@pytest.fixture
def fake() -> FakeDashScope:
    return FakeDashScope()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeDashScope) -> AsyncIterator[Make]:
    """Providers pointed at the fake, with the fake's key unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:

        def provider(**overrides: Any) -> DashScopeTTS:
            params: dict[str, Any] = {
                "api_key": fake.api_key,
                "url": str(server.make_url(PATH)),
                "timeout_s": 5.0,
            }
            return DashScopeTTS(session=session, **(params | overrides))

        yield provider


async def test_speech_is_24khz_pcm_from_a_documented_task(make: Make, fake: FakeDashScope) -> None:
    text = "你好，世界。"
    pcm = await make().synthesize(text, Voice())
    assert pcm == Pcm(tone(len(text) * SECONDS_PER_CHAR, 24000), 24000)
    assert bytes(fake.sent_audio) == pcm.samples  # odd-sized frames joined sample-exact
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.problems == []
    assert fake.texts == [text]
    [run] = fake.runs
    assert run["payload"]["model"] == "cosyvoice-v1"
    assert run["payload"]["parameters"] == {
        "text_type": "PlainText",
        "voice": "longxiaochun",
        "format": "pcm",
        "sample_rate": 24000,
        "volume": 50,
        "rate": 1.0,
        "pitch": 1.0,
    }


async def test_first_audio_comes_before_the_sentence_is_done(
    make: Make, fake: FakeDashScope
) -> None:
    fake.hold.clear()  # the fake sends one frame, then waits
    text = "这是一个相当长的句子，用来测试流式合成。"
    async with contextlib.aclosing(make().stream(text, Voice())) as chunks:
        first = await anext(chunks)
        assert 0 < len(first.samples) < len(tone(len(text) * SECONDS_PER_CHAR, 24000))
        fake.hold.set()
        rest = [chunk.samples async for chunk in chunks]
    assert first.samples + b"".join(rest) == bytes(fake.sent_audio)


async def test_closing_the_stream_early_closes_the_connection(
    make: Make, fake: FakeDashScope
) -> None:
    fake.hold.clear()
    async with contextlib.aclosing(make().stream("早上好。", Voice())) as chunks:
        await anext(chunks)
    await asyncio.wait_for(fake.closed.wait(), 2)
    fake.hold.set()


async def test_voice_speed_pitch_and_volume_reach_the_wire(make: Make, fake: FakeDashScope) -> None:
    tts = make(volume=130, default_voice="longwan")
    await tts.synthesize("一", Voice("dashscope", "longcheng", 1.3, 0.8))
    await tts.synthesize("二", Voice(speed_ratio=9.0, pitch_ratio=0.01))
    await tts.synthesize("三", Voice(speed_ratio=float("nan"), pitch_ratio=float("inf")))
    sent = [
        tuple(run["payload"]["parameters"][k] for k in ("voice", "rate", "pitch", "volume"))
        for run in fake.runs
    ]
    assert sent == [
        ("longcheng", 1.3, 0.8, 100),
        ("longwan", 2.0, 0.5, 100),  # clamped to the documented ranges
        ("longwan", 1.0, 1.0, 100),
    ]
    assert len({run["header"]["task_id"] for run in fake.runs}) == 3
    assert fake.problems == []


async def test_a_wrong_key_fails_without_logging_it(make: Make, fake: FakeDashScope) -> None:
    with pytest.raises(TTSError, match="dashscope: the handshake was refused: HTTP 401") as info:
        await make(api_key="sk-not-the-key").synthesize("hi", Voice())
    assert info.value.reason == "auth"
    assert "sk-" not in str(info.value)
    assert fake.runs == []


@pytest.mark.parametrize(
    ("mode", "voice", "match", "reason"),
    [
        ("throttle", None, f"task failed: {THROTTLED[0]}: Requests rate limit", "rate_limited"),
        ("ok", "nobody", "task failed: InvalidParameter: bad request", "refused"),
        ("fail_mid", None, "task failed: InternalError: internal server error", "refused"),
        ("empty", None, "dashscope: the task finished without audio", "bad_answer"),
        (
            "drop",
            None,
            "dashscope: (the connection closed before task-finished|connection lost)",
            "connection",
        ),
    ],
)
async def test_failures_are_errors_naming_their_cause(
    make: Make, fake: FakeDashScope, mode: Any, voice: str | None, match: str, reason: str
) -> None:
    fake.mode = mode
    with pytest.raises(TTSError, match=match) as info:
        await make().synthesize("今天天气不错。", Voice(voice_type=voice))
    assert info.value.reason == reason


async def test_a_server_sending_too_much_audio_is_stopped(
    make: Make, fake: FakeDashScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("asr_tts.tts.dashscope.MAX_AUDIO_BYTES", 10_000)
    with pytest.raises(TTSError, match="more than 10000 bytes of audio") as info:
        await make().synthesize("这句话合成出来远远超过一万字节。", Voice())
    assert info.value.reason == "bad_answer"
    await asyncio.wait_for(fake.closed.wait(), 2)


async def test_a_stalled_task_and_a_slow_first_audio(make: Make, fake: FakeDashScope) -> None:
    fake.first_delay_s = 0.3
    assert (await make(timeout_s=2.0).synthesize("好。", Voice())).samples
    with pytest.raises(TTSError, match=r"dashscope: no answer within 0\.1 s") as info:
        await make(timeout_s=0.1).synthesize("好。", Voice())
    assert info.value.reason == "timeout"
    fake.mode = "stall"
    with pytest.raises(TTSError, match=r"dashscope: no answer within 0\.2 s") as info:
        await make(timeout_s=0.2).synthesize("好。", Voice())
    assert info.value.reason == "timeout"


async def test_the_business_picks_dashscope_by_name(make: Make, fake: FakeDashScope) -> None:
    class Silent:
        name = "embedded"

        async def synthesize(self, text: str, voice: Voice) -> Pcm:
            raise AssertionError("the default provider must not speak")

        async def voice_list(self) -> VoiceList:
            return VoiceList("silent", ())

    spk = Speaker({"embedded": Silent(), "dashscope": make()}, "embedded")
    voice = Voice(provider="dashscope", voice_type="longwan", speed_ratio=1.2)
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    out = [item async for item in spk.sentences("第一句。第二句！", voice, encoder)]
    assert [s for s, _ in out] == ["第一句。", "第二句！"]
    decoder = OpusDecoder(24000)
    for _, frames in out:
        assert rms(b"".join(decoder.decode(f) for f in frames)) > 1000
    assert fake.texts == ["第一句。", "第二句！"]
    assert [run["payload"]["parameters"]["rate"] for run in fake.runs] == [1.2, 1.2]


LONG = "这是一个没有逗号的相当长的句子用来测试流式合成的首帧"  # one segment, 1.3 s of audio
# The Speaker of these tests keeps a long first sentence whole (no early cut at a word): the
# streamed head of one sentence is what they test.
WHOLE = {"first_max_chars": None}
HEAD_BYTES = 24000 * 2 * HEAD_FRAMES * 60 // 1000


async def test_an_answer_starts_playing_before_its_first_sentence_is_synthesised(
    make: Make, fake: FakeDashScope
) -> None:
    fake.hold.clear()  # the fake stops after the head's audio until told
    fake.hold_after = HEAD_BYTES
    synths: list[str] = []
    spk = Speaker(
        {"dashscope": make()}, "dashscope", on_synth=lambda n, _s: synths.append(n), **WHOLE
    )
    fmt = AudioFormat(sample_rate=24000)
    async with contextlib.aclosing(spk.segments(LONG, Voice(), FrameEncoder(fmt))) as it:
        sentence, head, whole = await asyncio.wait_for(anext(it), 2)
        assert (sentence, len(head), whole) == (LONG, HEAD_FRAMES, False)
        assert len(fake.sent_audio) < len(LONG) * SECONDS_PER_CHAR * 48000  # not done yet
        assert synths == ["dashscope"]
        fake.hold.set()
        rest, whole = [], False
        while not whole:
            more, piece, whole = await anext(it)
            assert more is None
            rest += piece
    # One encoder state runs through head and rest: the frames of one encode of the audio.
    assert head + rest == FrameEncoder(fmt).encode(Pcm(bytes(fake.sent_audio), 24000))
    assert fake.problems == []


async def test_a_sentence_cut_after_its_streamed_head_closes_the_connection(
    make: Make, fake: FakeDashScope
) -> None:
    fake.hold.clear()
    fake.hold_after = HEAD_BYTES
    spk = Speaker({"dashscope": make()}, "dashscope", **WHOLE)
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    async with contextlib.aclosing(spk.segments(LONG, Voice(), encoder)) as it:
        await anext(it)
    await asyncio.wait_for(fake.closed.wait(), 2)
    fake.hold.set()


async def test_a_short_first_sentence_and_a_failure_after_the_head(
    make: Make, fake: FakeDashScope
) -> None:
    spk = Speaker({"dashscope": make()}, "dashscope", **WHOLE)
    encoder = FrameEncoder(AudioFormat(sample_rate=16000))
    out = [s async for s in spk.segments("好。", Voice(), encoder)]  # 0.1 s: under the head
    assert [(s, whole) for s, _, whole in out] == [("好。", True)]
    fake.mode, fake.hold_after = "drop", HEAD_BYTES
    segments = spk.segments(LONG, Voice(), encoder)
    sentence, _, whole = await anext(segments)
    assert (sentence, whole) == (LONG, False)
    with pytest.raises(
        TTSError, match="dashscope: (the connection closed|connection lost)"
    ) as info:
        await anext(segments)
    assert info.value.reason == "connection"


async def test_abandoning_a_stream_does_not_wait_for_a_busy_server(
    make: Make, fake: FakeDashScope
) -> None:
    fake.pace = 20.0  # two seconds per frame, during which the fake reads nothing
    async with contextlib.aclosing(make().stream(LONG, Voice())) as chunks:
        await anext(chunks)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # dashscope.CLOSE_WAIT_S, then dropped
