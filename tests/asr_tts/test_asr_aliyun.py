"""The "aliyun" ASR provider (NLS real-time transcription) against a local fake gateway that
checks the token, the directives and the audio, and answers as Aliyun documents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.asr.aliyun import AliyunASR
from asr_tts.asr.base import ASRError
from asr_tts.nls_token import NLSTokens
from tests.asr_tts.fake_aliyun_nls import (
    AUTH_FAILED,
    SERVER_ERROR,
    TOKEN_PATH,
    TOO_MANY_REQUESTS,
    WS_PATH,
    FakeNLS,
)
from tests.asr_tts.test_asr_volcengine import feed_all, recognise, speech

Make = Callable[..., AliyunASR]


@pytest.fixture
def fake() -> FakeNLS:
    return FakeNLS()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeNLS) -> AsyncIterator[Make]:
    """Providers pointed at the fake, sharing one token source, unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        tokens = NLSTokens(
            access_key_id=fake.access_key_id,
            access_key_secret=fake.access_key_secret,
            session=session,
            url=str(server.make_url(TOKEN_PATH)),
        )

        def provider(**overrides: Any) -> AliyunASR:
            params: dict[str, Any] = {
                "appkey": fake.appkey,
                "tokens": tokens,
                "url": str(server.make_url(WS_PATH)),
                "timeout_s": 5.0,
            }
            return AliyunASR(session=session, **(params | overrides))

        yield provider


async def test_streams_audio_and_joins_the_sentences(make: Make, fake: FakeNLS) -> None:
    pcm = speech(1.5)
    stream = await make().open(language="zh-CN")
    await feed_all(stream, pcm[:16000])
    while len(fake.audio) < 3200:  # streaming: audio reaches the gateway before finish()
        await asyncio.sleep(0.005)
    await feed_all(stream, pcm[16000:])
    assert await stream.finish() == "打开客厅的灯，然后关窗。"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.problems == []
    assert bytes(fake.audio) == pcm
    assert fake.stopped
    assert fake.sent_first  # one sentence came while the audio streamed, one after the stop
    [start] = fake.starts
    assert start["payload"]["format"] == "pcm"
    assert start["payload"]["sample_rate"] == 16000
    assert fake.token_requests == 1


async def test_one_token_serves_many_utterances(make: Make, fake: FakeNLS) -> None:
    asr = make()
    for _ in range(3):
        assert await recognise(await asr.open(), speech(0.3)) == "打开客厅的灯，然后关窗。"
    assert fake.token_requests == 1
    assert len({s["header"]["task_id"] for s in fake.starts}) == 3


async def test_an_expired_token_is_refreshed_and_the_task_retried_once(
    make: Make, fake: FakeNLS
) -> None:
    asr = make()
    await recognise(await asr.open(), speech(0.2))
    fake.expire_all()
    assert await recognise(await asr.open(), speech(0.2)) == "打开客厅的灯，然后关窗。"
    assert fake.token_requests == 2
    assert fake.problems == []


async def test_a_token_refused_at_the_handshake_is_refreshed_too(make: Make, fake: FakeNLS) -> None:
    fake.refuse_at_handshake = True
    asr = make()
    await recognise(await asr.open(), speech(0.2))
    fake.expire_all()
    assert await recognise(await asr.open(), speech(0.2)) == "打开客厅的灯，然后关窗。"
    assert fake.token_requests == 2
    fake.mode = "expired"
    with pytest.raises(ASRError, match="refused the handshake: HTTP 403") as info:
        await asr.open()
    assert info.value.reason == "auth"
    assert fake.token_requests == 3


async def test_a_token_refused_twice_is_an_error(make: Make, fake: FakeNLS) -> None:
    fake.mode = "expired"  # every token, even a fresh one
    with pytest.raises(ASRError, match=f"error {AUTH_FAILED}: .*has expired") as info:
        await make().open()
    assert info.value.reason == "auth"
    assert fake.token_requests == 2  # refreshed once, not in a loop
    assert not any(token in str(info.value) for token in fake.tokens)


async def test_rate_limit_is_an_error_with_its_status(make: Make, fake: FakeNLS) -> None:
    fake.mode = "rate_limit"
    with pytest.raises(ASRError, match=f"error {TOO_MANY_REQUESTS}: .*TOO_MANY_REQUESTS") as info:
        await make().open()
    assert info.value.reason == "rate_limited"
    assert fake.token_requests == 1  # not a token problem: no refresh


async def test_task_failed_mid_stream_is_an_error(make: Make, fake: FakeNLS) -> None:
    fake.mode = "task_failed"
    stream = await make().open()
    with pytest.raises(ASRError, match=f"error {SERVER_ERROR}: SERVER_ERROR") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "refused"
    await stream.cancel()


async def test_a_connection_dropped_mid_stream_is_an_error(make: Make, fake: FakeNLS) -> None:
    fake.mode = "drop"
    stream = await make().open()
    with pytest.raises(
        ASRError, match="closed the connection|connection to Aliyun NLS lost"
    ) as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "connection"
    await stream.cancel()


async def test_a_slow_start_is_waited_for_within_the_timeout(make: Make, fake: FakeNLS) -> None:
    fake.mode, fake.delay_s = "slow_first", 0.3
    started = time.monotonic()
    stream = await make().open()
    assert time.monotonic() - started >= 0.3
    assert await recognise(stream, speech(0.2)) == "打开客厅的灯，然后关窗。"
    fake.delay_s = 5
    with pytest.raises(ASRError, match=r"did not start within 0\.3 s") as info:
        await make(timeout_s=0.3).open()
    assert info.value.reason == "timeout"


async def test_no_completion_times_out_and_closes(make: Make, fake: FakeNLS) -> None:
    fake.mode = "stall"
    stream = await make(timeout_s=0.3).open()
    await feed_all(stream, speech(0.5))
    with pytest.raises(ASRError, match=r"no final result within 0\.3 s") as info:
        await stream.finish()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.stopped


async def test_cancel_mid_stream_closes_without_a_stop(make: Make, fake: FakeNLS) -> None:
    stream = await make().open()
    await feed_all(stream, speech(0.6))
    await stream.cancel()
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert not fake.stopped
    assert fake.problems == []
    await stream.cancel()  # idempotent
    await stream.feed(speech(0.1))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()


async def test_wrong_appkey_or_unreachable_gateway_are_errors(make: Make, fake: FakeNLS) -> None:
    with pytest.raises(ASRError, match="error 40000000: Gateway:CLIENT_ERROR"):
        await make(appkey="someone-else").open()
    with pytest.raises(ASRError, match="cannot connect") as info:
        await make(url="ws://127.0.0.1:9/ws/v1").open()
    assert info.value.reason == "connection"
