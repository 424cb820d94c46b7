"""The "openai" ASR provider against a local fake that checks the request like the real API."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from asr_tts.asr.base import ASRError, ASRStream, wav_from_pcm
from asr_tts.asr.openai import OpenAIASR, describe_error, parse_text, whisper_language
from asr_tts.codec import pcm_from_wav
from tests.asr_tts.fake_openai import PATH, FakeOpenAI, check_wav

CHUNK = 1920  # 60 ms of 16 kHz s16le


def tone(seconds: float) -> bytes:
    """A 440 Hz tone as 16 kHz s16le."""
    t = np.arange(int(16000 * seconds)) / 16000
    return (np.sin(2 * math.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def feed_all(stream: ASRStream, pcm: bytes) -> None:
    """Feed `pcm` in 60 ms frames, as the relay does."""
    for i in range(0, len(pcm), CHUNK):
        await stream.feed(pcm[i : i + CHUNK])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def server(aiohttp_server: AiohttpServer, fake: FakeOpenAI) -> TestServer:
    return await aiohttp_server(fake.app())


def provider(
    server: TestServer,
    session: aiohttp.ClientSession,
    key: str = "sk-test-0123456789",
    timeout_s: float = 30.0,
) -> OpenAIASR:
    """The provider pointed at the fake."""
    return OpenAIASR(str(server.make_url("/")), key, session=session, timeout_s=timeout_s)


async def test_transcribes_an_utterance_sent_as_a_wav(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    asr = provider(server, session)
    pcm = tone(1.0)
    stream = await asr.open(language="en-US")
    await feed_all(stream, pcm)
    assert fake.hits == 0  # batch: nothing leaves before finish()
    assert await stream.finish() == "Turn on the light."
    assert fake.rejected == []
    [job] = fake.accepted
    assert job.pcm == pcm
    assert (job.model, job.language, job.response_format) == ("whisper-1", "en", "json")
    assert job.filename.endswith(".wav")
    assert job.content_type == "audio/wav"


async def test_no_language_field_without_a_language(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    asr = OpenAIASR(str(server.make_url("")), "sk-test-0123456789", session=session, model="m-1")
    stream = await asr.open()
    await feed_all(stream, tone(0.5))
    await stream.finish()
    [job] = fake.accepted
    assert (job.model, job.language) == ("m-1", None)


async def test_wrong_key_is_an_auth_error_that_does_not_quote_the_key(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    asr = provider(server, session, key="sk-wrong-key-abcdef")
    stream = await asr.open()
    await feed_all(stream, tone(0.5))
    with pytest.raises(ASRError, match="HTTP 401") as info:
        await stream.finish()
    assert info.value.reason == "auth"
    assert "sk-wrong" not in str(info.value)
    assert "invalid_api_key" in str(info.value)
    assert fake.rejected == ["auth"]


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "refused"), (503, "refused"), (429, "rate_limited")]
)
async def test_server_error_carries_status_type_and_message(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI, status: int, reason: str
) -> None:
    fake.mode, fake.error_status = "error", status
    stream = await provider(server, session).open()
    await feed_all(stream, tone(0.5))
    with pytest.raises(
        ASRError, match=rf"HTTP {status} \(server_error/None\): The server had"
    ) as info:
        await stream.finish()
    assert info.value.reason == reason


async def test_timeout_is_an_error_and_the_request_is_dropped(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "stall"
    stream = await provider(server, session, timeout_s=0.3).open()
    await feed_all(stream, tone(0.5))
    with pytest.raises(ASRError, match=r"within 0\.3 s") as info:
        await stream.finish()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(fake.hung_up.wait(), 2)


async def test_empty_text_is_an_empty_result(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.text = "  "
    stream = await provider(server, session).open()
    await feed_all(stream, tone(0.5))
    assert await stream.finish() == ""


async def test_too_little_audio_is_empty_without_a_request(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    stream = await provider(server, session).open()
    await stream.feed(tone(0.06))
    assert await stream.finish() == ""
    assert fake.hits == 0


async def test_a_non_json_answer_is_an_error(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "garbage"
    stream = await provider(server, session).open()
    await feed_all(stream, tone(0.5))
    with pytest.raises(ASRError, match="without a text field") as info:
        await stream.finish()
    assert info.value.reason == "bad_answer"


async def test_cancel_mid_stream_sends_nothing(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    stream = await provider(server, session).open()
    await feed_all(stream, tone(0.5))
    await stream.cancel()
    await stream.cancel()  # idempotent
    await stream.feed(tone(0.1))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()
    assert fake.hits == 0


async def test_cancelling_a_finish_in_flight_drops_the_request(
    server: TestServer, session: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.mode = "stall"
    stream = await provider(server, session).open()
    await feed_all(stream, tone(0.5))
    task = asyncio.create_task(stream.finish())
    while not fake.accepted:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.cancel()  # safe after an interrupted finish
    await asyncio.wait_for(fake.hung_up.wait(), 2)


async def test_unreachable_server_is_an_error(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused
        asr = OpenAIASR(f"http://127.0.0.1:{port}", "k", session=session)
        stream = await asr.open()
        await feed_all(stream, tone(0.5))
        with pytest.raises(ASRError, match="request failed") as info:
            await stream.finish()
        assert info.value.reason == "connection"


async def test_an_utterance_too_long_is_refused(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    stream = await provider(server, session).open()
    second = tone(1.0)
    for _ in range(120):
        await stream.feed(second)
    with pytest.raises(ASRError, match="longer than 120 s"):
        await stream.feed(second)


@pytest.mark.parametrize(
    ("wav", "fields", "why"),
    [
        (wav_from_pcm(tone(0.2), 8000), {"model": "whisper-1"}, "fmt"),
        (wav_from_pcm(tone(0.2))[:-10], {"model": "whisper-1"}, "size"),
        (wav_from_pcm(tone(0.2)), {}, "bad fields"),
        (wav_from_pcm(tone(0.2)), {"model": "whisper-1", "language": "en-US"}, "ISO 639-1"),
        (wav_from_pcm(tone(0.2)), {"model": "w", "response_format": "text"}, "json"),
    ],
)
async def test_the_fake_rejects_what_the_api_would(
    server: TestServer,
    session: aiohttp.ClientSession,
    fake: FakeOpenAI,
    wav: bytes,
    fields: dict[str, str],
    why: str,
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", wav, filename="a.wav", content_type="audio/wav")
    for name, value in fields.items():
        form.add_field(name, value)
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(server.make_url(PATH), data=form, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert why in fake.rejected[0]


def test_wav_header_is_canonical() -> None:
    pcm = tone(0.25) + b"\x01"  # a stray odd byte is dropped
    wav = wav_from_pcm(pcm)
    assert check_wav(wav) == pcm[:-1]
    parsed = pcm_from_wav(wav)
    assert (parsed.sample_rate, parsed.samples) == (16000, pcm[:-1])


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, None), ("", None), ("en", "en"), ("zh-CN", "zh"), ("en_US", "en"), ("ZH", "zh")],
)
def test_whisper_language(given: str | None, expected: str | None) -> None:
    assert whisper_language(given) == expected


def test_error_descriptions() -> None:
    body = b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit"}}'
    assert describe_error(429, body) == "HTTP 429 (requests/rate_limit): slow down"
    assert describe_error(502, b"<html>bad gateway</html>") == "HTTP 502"
    assert describe_error(500, b'{"error": "flat"}') == "HTTP 500"
    assert parse_text(b'{"text": " hi "}') == "hi"
    with pytest.raises(ASRError, match="not a string") as info:
        parse_text(b'{"text": 3}')
    assert info.value.reason == "bad_answer"
