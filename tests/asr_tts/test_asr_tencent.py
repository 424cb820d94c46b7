"""The "tencent" ASR provider against a local fake of Tencent's real-time WebSocket API that
recomputes the handshake signature and checks every parameter and frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.asr.base import ASRError
from asr_tts.asr.tencent import TencentASR, join_sentences
from tests.asr_tts.fake_tencent import APPID, SECRET_ID, SECRET_KEY, AsrMode, FakeTencentASR
from tests.asr_tts.test_asr_volcengine import feed_all, raised_by_feed, recognise, speech

Make = Callable[..., TencentASR]


@pytest.fixture
def fake() -> FakeTencentASR:
    return FakeTencentASR()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeTencentASR) -> AsyncIterator[Make]:
    """Providers pointed at the fake, with the fake's account unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:

        def provider(**overrides: Any) -> TencentASR:
            params: dict[str, Any] = {
                "appid": APPID,
                "secret_id": SECRET_ID,
                "secret_key": SECRET_KEY,
                "url": str(server.make_url("/asr/v2")).replace("http", "ws", 1),
                "timeout_s": 5.0,
            }
            return TencentASR(session=session, **(params | overrides))

        yield provider


async def test_streams_pcm_and_returns_the_final_text(make: Make, fake: FakeTencentASR) -> None:
    pcm = speech(1.5)
    stream = await make().open(language="zh-CN")
    await feed_all(stream, pcm[:32000])
    while len(fake.audio) < 1280:  # streaming: audio reaches the server before finish()
        await asyncio.sleep(0.005)
    await feed_all(stream, pcm[32000:])
    assert await stream.finish() == "打开客厅的灯。"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.problems == []
    assert bytes(fake.audio) == pcm
    assert fake.got_end
    [query] = fake.queries
    assert (query["engine_model_type"], query["voice_format"], query["needvad"]) == (
        "16k_zh",
        "1",
        "1",
    )
    assert SECRET_KEY not in str(query)
    assert int(query["expired"]) - int(query["timestamp"]) == 15 * 60  # a leaked URL soon dies


async def test_every_connection_is_freshly_signed_and_english_picks_16k_en(
    make: Make, fake: FakeTencentASR
) -> None:
    asr = make()
    for language in ("en-US", None):
        await recognise(await asr.open(language=language), speech(0.3))
    first, second = fake.queries
    assert first["voice_id"] != second["voice_id"]
    assert first["signature"] != second["signature"]
    assert [q["engine_model_type"] for q in fake.queries] == ["16k_en", "16k_zh"]


async def test_sentences_are_joined_in_index_order(make: Make, fake: FakeTencentASR) -> None:
    fake.mode = "two"
    assert await recognise(await make().open(), speech(0.3)) == "Turn on the light. Thanks"
    assert join_sentences(["你好。", "再见", ""]) == "你好。再见"


async def test_a_wrong_key_fails_at_open_with_4002(make: Make, fake: FakeTencentASR) -> None:
    with pytest.raises(ASRError, match="Tencent error 4002: 鉴权失败") as info:
        await make(secret_key="stolen-key").open()
    assert info.value.reason == "auth"
    assert "stolen-key" not in str(info.value)
    assert fake.problems == []


@pytest.mark.parametrize(
    ("mode", "error", "reason"),
    [("busy", "error 4006: 账号当前调用并发超限", "rate_limited"), ("deny", "error 4002", "auth")],
)
async def test_refusals_at_the_handshake_are_errors_with_their_code(
    make: Make, fake: FakeTencentASR, mode: AsrMode, error: str, reason: str
) -> None:
    fake.mode = mode
    with pytest.raises(ASRError, match=error) as info:
        await make().open()
    assert info.value.reason == reason


async def test_an_unknown_engine_is_an_invalid_parameter(make: Make, fake: FakeTencentASR) -> None:
    with pytest.raises(ASRError, match="error 4001: .*engine_model_type 16k_xx") as info:
        await make(engine_model_type="16k_xx").open()
    assert info.value.reason == "refused"


async def test_a_backend_error_mid_stream_reaches_feed(make: Make, fake: FakeTencentASR) -> None:
    fake.mode = "server_error"
    stream = await make().open()
    await stream.feed(speech(0.1))
    await asyncio.wait_for(raised_by_feed(stream), 2)
    with pytest.raises(ASRError, match="error 5000") as info:
        await stream.finish()
    assert info.value.reason == "refused"


async def test_a_connection_dropped_mid_stream_is_an_error(
    make: Make, fake: FakeTencentASR
) -> None:
    fake.mode = "drop"
    stream = await make().open()
    with pytest.raises(ASRError, match="closed|lost") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "connection"
    await stream.cancel()


async def test_a_slow_handshake_answer_times_out(make: Make, fake: FakeTencentASR) -> None:
    fake.mode, fake.delay_s = "slow", 1.0
    with pytest.raises(ASRError, match=r"no handshake answer from Tencent within 0\.2 s") as info:
        await make(timeout_s=0.2).open()
    assert info.value.reason == "timeout"


async def test_no_final_result_times_out_and_closes(make: Make, fake: FakeTencentASR) -> None:
    fake.mode = "stall"
    stream = await make(timeout_s=0.3).open()
    await feed_all(stream, speech(0.5))
    with pytest.raises(ASRError, match=r"no final result within 0\.3 s") as info:
        await stream.finish()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.got_end


async def test_empty_result_is_empty_text(make: Make, fake: FakeTencentASR) -> None:
    fake.mode = "empty"
    assert await recognise(await make().open(), speech(0.5)) == ""


async def test_too_much_audio_at_once_is_refused_with_4000(
    make: Make, fake: FakeTencentASR
) -> None:
    stream = await make(packet_ms=0).open()
    with pytest.raises(ASRError, match="error 4000") as info:
        await recognise(stream, speech(4.0))  # 4 s of audio in well under a second
    assert info.value.reason == "rate_limited"
    await stream.cancel()


async def test_cancel_mid_stream_closes_without_the_end_message(
    make: Make, fake: FakeTencentASR
) -> None:
    stream = await make().open()
    await feed_all(stream, speech(0.6))
    await stream.cancel()
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert not fake.got_end
    assert fake.problems == []
    await stream.cancel()  # idempotent
    await stream.feed(speech(0.1))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()


async def test_packets_are_at_least_packet_ms(make: Make, fake: FakeTencentASR) -> None:
    stream = await make(packet_ms=100).open()
    await feed_all(stream, speech(0.5))
    assert await stream.finish() == fake.text
    *middle, last = fake.packets
    assert middle
    assert all(size >= 3200 for size in middle)  # 100 ms of 16 kHz s16le
    assert 0 < last < 3200  # what was pending went out before the end message
    assert sum(fake.packets) == 5 * 3200


async def test_a_refused_upgrade_is_an_error_with_its_status(make: Make) -> None:
    origin = make().signed_url(None, 0, 1, "v").origin()  # the fake's address
    with pytest.raises(ASRError, match="Tencent refused the handshake: HTTP 404") as info:
        await make(url=str(origin.with_path("/asr/v9"))).open()
    assert info.value.reason == "refused"


async def test_unreachable_server_is_an_error(make: Make) -> None:
    with pytest.raises(ASRError, match="cannot connect to Tencent: ClientConnectorError") as info:
        await make(url="ws://127.0.0.1:9/asr/v2").open()
    assert info.value.reason == "connection"
