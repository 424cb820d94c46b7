"""The "aliyun" TTS provider (NLS RESTful streaming synthesis) against a local fake gateway
that checks the token, the appkey and the body, and answers as Aliyun documents."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder
from asr_tts.nls_token import NLSTokens
from asr_tts.pcm import Pcm
from asr_tts.tts.aliyun import AliyunTTS, rate_value, text_pieces
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.speaker import HEAD_FRAMES, Speaker
from protocol.audio_format import AudioFormat
from tests.asr_tts.fake_aliyun_nls import (
    AUTH_FAILED,
    SERVER_ERROR,
    TOKEN_PATH,
    TOO_MANY_REQUESTS,
    TTS_PATH,
    FakeNLS,
    tone,
)

Make = Callable[..., AliyunTTS]


@pytest.fixture
def fake() -> FakeNLS:
    return FakeNLS()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeNLS) -> AsyncIterator[Make]:
    """Providers pointed at the fake, sharing one token source."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        tokens = NLSTokens(
            access_key_id=fake.access_key_id,
            access_key_secret=fake.access_key_secret,
            session=session,
            url=str(server.make_url(TOKEN_PATH)),
        )

        def provider(**overrides: Any) -> AliyunTTS:
            params: dict[str, Any] = {
                "appkey": fake.appkey,
                "tokens": tokens,
                "url": str(server.make_url(TTS_PATH)),
                "timeout_s": 5.0,
            }
            return AliyunTTS(session=session, **(params | overrides))

        yield provider


async def test_speech_is_16khz_pcm_from_a_documented_request(make: Make, fake: FakeNLS) -> None:
    text = "你好，世界。"
    pcm = await make().synthesize(text, Voice())
    assert pcm == Pcm(tone(0.05 * len(text), 16000), 16000)  # every streamed chunk, in order
    [body] = fake.tts_bodies
    assert body == {
        "appkey": fake.appkey,
        "token": next(iter(fake.tokens)),
        "text": text,
        "format": "pcm",
        "sample_rate": 16000,
        "voice": "xiaoyun",
        "volume": 50,
        "speech_rate": 0,
        "pitch_rate": 0,
    }
    assert fake.problems == []


async def test_voice_speed_and_pitch_reach_the_wire(make: Make, fake: FakeNLS) -> None:
    tts = make()
    await tts.synthesize("一", Voice("aliyun", "aixia", 2.0, 0.5))
    await tts.synthesize("二", Voice(speed_ratio=9.0, pitch_ratio=0.01))
    await tts.synthesize("三", Voice(speed_ratio=float("nan"), pitch_ratio=1.25))
    sent = [(b["voice"], b["speech_rate"], b["pitch_rate"]) for b in fake.tts_bodies]
    assert sent == [("aixia", 500, -500), ("xiaoyun", 500, -500), ("xiaoyun", 0, 200)]
    assert fake.token_requests == 1


async def test_a_sentence_over_the_limit_goes_in_pieces(make: Make, fake: FakeNLS) -> None:
    text = "这是一个很长的句子，" * 20 + "Short words, then more words until the end" * 3
    pcm = await make().synthesize(text, Voice())
    sent = [b["text"] for b in fake.tts_bodies]
    assert "".join(sent) == text  # nothing lost to the gateway's truncation
    assert len(sent) == 2  # 400 + 129 weighed: 300 (15 clauses), then the rest
    assert all(sum(1 if c.isascii() else 2 for c in piece) <= 300 for piece in sent)
    assert all(piece.endswith(("，", " ")) for piece in sent[:-1])  # cut after a break
    assert len(pcm.samples) == sum(len(tone(0.05 * len(p), 16000)) for p in sent)


def test_text_without_breaks_is_cut_at_the_limit() -> None:
    assert text_pieces("a" * 650) == ["a" * 300, "a" * 300, "a" * 50]
    assert text_pieces("语" * 151) == ["语" * 150, "语"]
    assert text_pieces("") == []


def test_rate_scale_follows_the_documented_table() -> None:
    assert [rate_value(r) for r in (0.5, 0.8, 1.0, 1.25, 2.0)] == [-500, -125, 0, 200, 500]


async def test_an_expired_token_is_refreshed_and_the_sentence_retried_once(
    make: Make, fake: FakeNLS
) -> None:
    tts = make()
    await tts.synthesize("一", Voice())
    fake.expire_all()
    assert (await tts.synthesize("二", Voice())).samples
    assert fake.token_requests == 2
    fake.mode = "expired"
    with pytest.raises(TTSError, match=f"HTTP 400 status {AUTH_FAILED}: .*has expired") as info:
        await tts.synthesize("三", Voice())
    assert info.value.reason == "auth"
    assert fake.token_requests == 3  # once more, not in a loop
    assert not any(token in str(info.value) for token in fake.tokens)


@pytest.mark.parametrize(
    ("mode", "match", "reason"),
    [
        ("rate_limit", f"HTTP 429 status {TOO_MANY_REQUESTS}: .*TOO_MANY_REQUESTS", "rate_limited"),
        ("task_failed", f"HTTP 500 status {SERVER_ERROR}", "refused"),
        ("drop", "aliyun: ClientPayloadError|aliyun: ServerDisconnected", "connection"),
        ("token_down", "aliyun: no token: CreateToken: HTTP 503", "refused"),
    ],
)
async def test_gateway_failures_are_errors(
    make: Make, fake: FakeNLS, mode: Any, match: str, reason: str
) -> None:
    fake.mode = mode
    with pytest.raises(TTSError, match=match) as info:
        await make().synthesize("一句话。", Voice())
    assert info.value.reason == reason


async def test_an_unknown_voice_or_appkey_is_refused(make: Make) -> None:
    with pytest.raises(TTSError, match="status 40000000: .*voice nobody"):
        await make().synthesize("hi", Voice(voice_type="nobody"))
    with pytest.raises(TTSError, match="status 40000000: .*appkey"):
        await make(appkey="other").synthesize("hi", Voice())


async def test_a_slow_first_chunk_is_waited_for_and_a_stall_times_out(
    make: Make, fake: FakeNLS
) -> None:
    fake.mode, fake.delay_s = "slow_first", 0.2
    started = time.monotonic()
    assert (await make().synthesize("慢", Voice())).samples
    assert time.monotonic() - started >= 0.2
    fake.mode = "stall"
    with pytest.raises(TTSError, match=r"no answer within 0\.3 s") as info:
        await make(timeout_s=0.3).synthesize("一句很长的话，一句很长的话。", Voice())
    assert info.value.reason == "timeout"


LONG = "这是一个没有逗号的相当长的句子用来测试流式合成的首帧"  # one request, 1.35 s of audio
HEAD_BYTES = 16000 * 2 * HEAD_FRAMES * 60 // 1000


async def test_first_audio_comes_before_the_sentence_is_done(make: Make, fake: FakeNLS) -> None:
    fake.tts_hold.clear()  # the fake sends one 3200-byte chunk, then waits
    fake.tts_hold_after = 1
    async with contextlib.aclosing(make().stream(LONG, Voice())) as chunks:
        first = await asyncio.wait_for(anext(chunks), 2)
        assert 0 < len(first.samples) <= len(fake.tts_sent) < len(tone(0.05 * len(LONG), 16000))
        fake.tts_hold.set()
        rest = [chunk.samples async for chunk in chunks]
    assert first.samples + b"".join(rest) == bytes(fake.tts_sent)
    assert len(fake.tts_sent) == len(tone(0.05 * len(LONG), 16000))


async def test_odd_chunks_are_carried_to_whole_samples_and_a_flood_is_stopped(
    make: Make, fake: FakeNLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.tts_chunk = 3201  # every sample after the first chunk straddles two writes
    fake.tts_hold.clear()
    fake.tts_hold_after = 1  # the first chunk alone, its odd byte held back
    async with contextlib.aclosing(make().stream(LONG, Voice())) as chunks:
        first = await asyncio.wait_for(anext(chunks), 2)
        assert 0 < len(first.samples) <= 3200  # the odd 3201st byte waits for the next
        fake.tts_hold.set()
        rest = [chunk.samples async for chunk in chunks]
    assert all(len(samples) % 2 == 0 for samples in [first.samples, *rest])
    assert first.samples + b"".join(rest) == bytes(fake.tts_sent)
    monkeypatch.setattr("asr_tts.tts.aliyun.MAX_BODY_BYTES", 10_000)
    with pytest.raises(TTSError, match="answer exceeds 10000 bytes"):
        await make().synthesize(LONG, Voice())


async def test_closing_the_stream_early_drops_the_connection(make: Make, fake: FakeNLS) -> None:
    fake.tts_hold.clear()
    fake.tts_hold_after = 1
    async with contextlib.aclosing(make().stream(LONG, Voice())) as chunks:
        await asyncio.wait_for(anext(chunks), 2)
    assert fake.tts_peer is not None
    for _ in range(200):  # the fake, still holding the rest, sees the client leave
        if fake.tts_peer.is_closing():
            break
        await asyncio.sleep(0.01)
    assert fake.tts_peer.is_closing()
    fake.tts_hold.set()


async def test_an_aliyun_answer_starts_playing_before_its_first_sentence_is_synthesised(
    make: Make, fake: FakeNLS
) -> None:
    fake.tts_hold.clear()  # the fake stops after the head's audio until told
    fake.tts_hold_after = HEAD_BYTES
    synths: list[str] = []
    # No early cut at a word: the streamed head and rest of one sentence are under test.
    spk = Speaker(
        {"aliyun": make()},
        "aliyun",
        on_synth=lambda n, _s: synths.append(n),
        first_max_chars=None,
    )
    fmt = AudioFormat(sample_rate=16000)
    async with contextlib.aclosing(spk.segments(LONG, Voice(), FrameEncoder(fmt))) as it:
        sentence, head, whole = await asyncio.wait_for(anext(it), 2)
        assert (sentence, len(head), whole) == (LONG, HEAD_FRAMES, False)
        assert len(fake.tts_sent) < len(tone(0.05 * len(LONG), 16000))  # not done yet
        assert synths == ["aliyun"]
        fake.tts_hold.set()
        rest, whole = [], False
        while not whole:
            more, piece, whole = await anext(it)
            assert more is None
            rest += piece
    # One encoder state runs through head and rest: the frames of one encode of the audio.
    assert head + rest == FrameEncoder(fmt).encode(Pcm(bytes(fake.tts_sent), 16000))
    assert fake.problems == []
