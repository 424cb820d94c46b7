"""The "volcengine" ASR provider against a local fake speaking the v2 binary protocol, and the
frame codec byte by byte."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.asr.base import ASRError, ASRStream
from asr_tts.asr.volcengine import (
    AUDIO_ONLY_REQUEST,
    FLAG_LAST,
    FLAG_NONE,
    FULL_CLIENT_REQUEST,
    FrameError,
    ServerMessage,
    VolcengineASR,
    decode_server_message,
    encode_client_message,
)
from tests.asr_tts.fake_volcengine_asr import (
    DENIED,
    PATH,
    SERVER_FAILED,
    FakeVolcengine,
    Mode,
    error_frame,
    parse_client_frame,
    server_frame,
)

CHUNK = 1920  # 60 ms of 16 kHz s16le


def speech(seconds: float) -> bytes:
    """Distinct, non-silent samples, so reordering or loss would show."""
    n = int(16000 * seconds)
    return struct.pack(f"<{n}h", *((i * 37) % 20000 - 10000 for i in range(n)))


async def feed_all(stream: ASRStream, pcm: bytes) -> None:
    """Feed `pcm` in 60 ms frames, as the relay does."""
    for i in range(0, len(pcm), CHUNK):
        await stream.feed(pcm[i : i + CHUNK])


async def recognise(stream: ASRStream, pcm: bytes) -> str:
    """Feed a whole utterance and finish it."""
    await feed_all(stream, pcm)
    return await stream.finish()


Make = Callable[..., VolcengineASR]


@pytest.fixture
def fake() -> FakeVolcengine:
    return FakeVolcengine()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeVolcengine) -> AsyncIterator[Make]:
    """Providers pointed at the fake, with the fake's account unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:

        def provider(**overrides: Any) -> VolcengineASR:
            params: dict[str, Any] = {
                "appid": fake.appid,
                "token": fake.token,
                "cluster": fake.cluster,
                "url": str(server.make_url(PATH)),
                "timeout_s": 5.0,
            }
            return VolcengineASR(session=session, **(params | overrides))

        yield provider


async def test_streams_audio_and_returns_the_final_text(make: Make, fake: FakeVolcengine) -> None:
    pcm = speech(1.5)
    stream = await make().open(language="zh-CN")
    await feed_all(stream, pcm[: 16000 * 2])
    while len(fake.audio) < 3200:  # streaming: audio reaches the server before finish()
        await asyncio.sleep(0.005)
    await feed_all(stream, pcm[16000 * 2 :])
    assert await stream.finish() == "打开客厅的灯。"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.problems == []
    assert bytes(fake.audio) == pcm
    *middle, (last_flags, _) = fake.packets
    assert last_flags == FLAG_LAST
    assert all(flags == FLAG_NONE and size >= 3200 for flags, size in middle)  # >= 100 ms
    [req] = fake.requests
    assert req["audio"]["language"] == "zh-CN"
    assert req["request"]["result_type"] == "full"


async def test_packet_ms_zero_sends_every_frame_at_once(make: Make, fake: FakeVolcengine) -> None:
    stream = await make(packet_ms=0).open()
    await feed_all(stream, speech(0.18))
    await stream.feed(b"")  # nothing to send
    assert await stream.finish() == fake.text
    assert fake.packets == [(FLAG_NONE, CHUNK)] * 3 + [(FLAG_LAST, 0)]


async def test_requests_carry_a_fresh_reqid(make: Make, fake: FakeVolcengine) -> None:
    asr = make()
    for _ in range(2):
        await recognise(await asr.open(), speech(0.3))
    first, second = fake.requests
    assert first["request"]["reqid"] != second["request"]["reqid"]
    assert "language" not in first["audio"]


async def test_wrong_token_is_refused_at_the_handshake(make: Make, fake: FakeVolcengine) -> None:
    with pytest.raises(ASRError, match="HTTP 401") as info:
        await make(token="tok-stolen").open()
    assert info.value.reason == "auth"
    assert "tok-" not in str(info.value)


async def test_denied_account_is_an_error_with_the_code(make: Make, fake: FakeVolcengine) -> None:
    stream = await make(appid="someone-else").open()
    with pytest.raises(ASRError, match=f"error {DENIED}: access denied") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "refused"
    assert fake.token not in str(info.value)
    await stream.cancel()


async def test_error_frame_is_an_error_with_its_code(make: Make, fake: FakeVolcengine) -> None:
    fake.mode = "server_error"
    stream = await make().open()
    # The error may surface on a later feed() or on finish(); either way it names the code.
    with pytest.raises(ASRError, match=f"error {SERVER_FAILED}: .*internal error") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "refused"
    await stream.cancel()


async def test_feed_raises_once_the_server_has_failed(make: Make, fake: FakeVolcengine) -> None:
    fake.mode = "deny"
    stream = await make().open()
    await asyncio.wait_for(raised_by_feed(stream), 2)
    with pytest.raises(ASRError, match=f"error {DENIED}"):
        await stream.feed(speech(0.2))
    await stream.cancel()


async def raised_by_feed(stream: ASRStream) -> None:
    """Wait until feed() reports the failure the server has sent."""
    while True:
        try:
            await stream.feed(b"")
        except ASRError:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("mode", "error"), [("text", "unexpected TEXT message"), ("garbage", "malformed.*version 1")]
)
async def test_frames_off_the_protocol_are_errors(
    make: Make, fake: FakeVolcengine, mode: Mode, error: str
) -> None:
    fake.mode = mode
    stream = await make().open()
    with pytest.raises(ASRError, match=error) as info:
        await recognise(stream, speech(0.5))
    assert info.value.reason == "bad_answer"
    await stream.cancel()


async def test_a_handshake_that_never_completes_times_out(make: Make, fake: FakeVolcengine) -> None:
    fake.mode = "slow_handshake"
    with pytest.raises(ASRError, match=r"no connection to Volcengine within 0\.2 s") as info:
        await make(timeout_s=0.2).open()
    assert info.value.reason == "timeout"


async def test_server_hanging_up_before_the_result_is_an_error(
    make: Make, fake: FakeVolcengine
) -> None:
    fake.mode = "hang_up"
    stream = await make().open()
    with pytest.raises(ASRError, match="connection|closed") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "connection"
    await stream.cancel()


async def test_no_final_result_times_out_and_closes(make: Make, fake: FakeVolcengine) -> None:
    fake.mode = "stall"
    stream = await make(timeout_s=0.3).open()
    await feed_all(stream, speech(0.5))
    with pytest.raises(ASRError, match=r"no final result within 0\.3 s") as info:
        await stream.finish()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.got_last


async def test_empty_result_is_empty_text(make: Make, fake: FakeVolcengine) -> None:
    fake.mode = "empty"
    stream = await make().open()
    await feed_all(stream, speech(0.5))
    assert await stream.finish() == ""


async def test_cancel_mid_stream_closes_without_a_last_packet(
    make: Make, fake: FakeVolcengine
) -> None:
    stream = await make().open()
    await feed_all(stream, speech(0.6))
    await stream.cancel()
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert not fake.got_last
    assert fake.problems == []
    await stream.cancel()  # idempotent
    await stream.feed(speech(0.1))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()


async def test_unreachable_server_is_an_error(make: Make) -> None:
    with pytest.raises(ASRError, match="cannot connect") as info:
        await make(url="ws://127.0.0.1:9/api/v2/asr").open()
    assert info.value.reason == "connection"


def test_client_headers_are_the_documented_bytes() -> None:
    full = encode_client_message(FULL_CLIENT_REQUEST, FLAG_NONE, b'{"a": 1}')
    audio = encode_client_message(AUDIO_ONLY_REQUEST, FLAG_NONE, b"\x01\x02")
    last = encode_client_message(AUDIO_ONLY_REQUEST, FLAG_LAST, b"")
    assert full[:4] == bytes((0x11, 0x10, 0x11, 0x00))
    assert audio[:4] == bytes((0x11, 0x20, 0x11, 0x00))
    assert last[:4] == bytes((0x11, 0x22, 0x11, 0x00))
    assert struct.unpack(">I", audio[4:8])[0] == len(audio) - 8
    assert gzip.decompress(audio[8:]) == b"\x01\x02"
    assert parse_client_frame(last).payload == b""  # the fake's parser agrees


def test_decodes_a_final_response() -> None:
    body = {"code": 1000, "sequence": -4, "result": [{"text": "测试语音识别。", "confidence": 0}]}
    assert decode_server_message(server_frame(body)) == ServerMessage(
        "response", 1000, -4, text="测试语音识别。", message=""
    )
    partial = {"code": 1000, "message": "Success", "sequence": 2}
    assert decode_server_message(server_frame(partial)).text == ""


def test_decodes_error_ack_and_uncompressed_frames() -> None:
    assert decode_server_message(error_frame(1099, "boom")) == ServerMessage(
        "error", 1099, 0, message='{"message": "boom"}'
    )
    ack = bytes((0x11, 0xB0, 0x00, 0x00)) + struct.pack(">i", 3)
    assert decode_server_message(ack) == ServerMessage("ack", 1000, 3)
    plain = json.dumps({"code": 1013, "sequence": -1, "message": "silence"}).encode()
    frame = bytes((0x11, 0x90, 0x10, 0x00)) + struct.pack(">I", len(plain)) + plain
    assert decode_server_message(frame) == ServerMessage("response", 1013, -1, message="silence")
    extended = bytes((0x12, 0x90, 0x10, 0x00)) + b"\0" * 4 + struct.pack(">I", len(plain)) + plain
    assert decode_server_message(extended).code == 1013  # header extensions are skipped


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes((0x21, 0x90, 0x11, 0x00)) + b"\0" * 4,  # protocol version 2
        bytes((0x10, 0x90, 0x11, 0x00)) + b"\0" * 4,  # header size 0
        bytes((0x11, 0x90, 0x11, 0x00)),  # no payload size
        bytes((0x11, 0x90, 0x11, 0x00)) + struct.pack(">I", 9) + b"short",
        bytes((0x11, 0x90, 0x11, 0x00)) + struct.pack(">I", 5) + b"nogz!",
        bytes((0x11, 0x90, 0x10, 0x00)) + struct.pack(">I", 5) + b"[1,2]",
        bytes((0x11, 0x90, 0x10, 0x00)) + struct.pack(">I", 5) + b"{oops",
        bytes((0x11, 0x90, 0x10, 0x00)) + struct.pack(">I", 14) + b'{"code":"ok"} ',
        bytes((0x11, 0x30, 0x10, 0x00)) + struct.pack(">I", 2) + b"{}",  # a client type
    ],
)
def test_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_server_message(frame)
