"""The "dashscope" ASR provider (Paraformer real-time) against a local fake of the inference
WebSocket, and the wire helpers both DashScope providers share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts import dashscope
from asr_tts.asr.base import ASRError, ASRStream
from asr_tts.asr.dashscope import DashScopeASR, language_hints
from asr_tts.dashscope import DashScopeError
from tests.asr_tts.fake_dashscope import PATH, THROTTLED, FakeDashScope
from tests.asr_tts.test_asr_volcengine import feed_all, recognise, speech

Make = Callable[..., DashScopeASR]


@pytest.fixture
def fake() -> FakeDashScope:
    return FakeDashScope()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeDashScope) -> AsyncIterator[Make]:
    """Providers pointed at the fake, with the fake's key unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:

        def provider(**overrides: Any) -> DashScopeASR:
            params: dict[str, Any] = {
                "api_key": fake.api_key,
                "url": str(server.make_url(PATH)),
                "timeout_s": 5.0,
            }
            return DashScopeASR(session=session, **(params | overrides))

        yield provider


async def test_streams_audio_and_returns_the_final_text(make: Make, fake: FakeDashScope) -> None:
    pcm = speech(1.5)
    stream = await make().open(language="zh-CN")
    await feed_all(stream, pcm[:32000])
    while len(fake.audio) < 16000:  # streaming: audio reaches the server before finish()
        await asyncio.sleep(0.005)
    await feed_all(stream, pcm[32000:])
    assert await stream.finish() == "打开客厅的灯。"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.problems == []
    assert bytes(fake.audio) == pcm
    assert fake.got_finish
    assert all(size >= 3200 for size in fake.packets[:-1])  # >= 100 ms per packet
    [run] = fake.runs
    assert run["payload"]["model"] == "paraformer-realtime-v2"
    assert run["payload"]["parameters"] == {
        "format": "pcm",
        "sample_rate": 16000,
        "language_hints": ["zh"],
    }


async def test_no_audio_goes_out_before_task_started(make: Make, fake: FakeDashScope) -> None:
    fake.start_delay_s = 0.2  # audio sent meanwhile would be a problem the fake records
    started = time.monotonic()
    stream = await make().open()
    assert time.monotonic() - started >= 0.2
    assert await recognise(stream, speech(0.5)) == fake.text
    assert fake.problems == []


async def test_sentences_are_joined_and_tasks_are_fresh(make: Make, fake: FakeDashScope) -> None:
    fake.text, fake.sentences = "今天天气很好。我们去公园吧。", 2
    asr = make(packet_ms=0)
    assert await recognise(await asr.open(), speech(1.2)) == fake.text
    assert await recognise(await asr.open(language="auto"), speech(0.3)) == fake.text
    first, second = (run["header"]["task_id"] for run in fake.runs)
    assert first != second
    assert "language_hints" not in fake.runs[1]["payload"]["parameters"]
    assert fake.problems == []


async def test_an_unended_last_sentence_is_kept(make: Make, fake: FakeDashScope) -> None:
    fake.text, fake.sentences, fake.last_ended = "一二三。四五六", 2, False
    assert await recognise(await make().open(), speech(0.7)) == fake.text


async def test_a_slow_first_result_is_waited_for(make: Make, fake: FakeDashScope) -> None:
    fake.first_delay_s = 0.3
    stream = await make(timeout_s=2.0).open()
    assert await recognise(stream, speech(1.0)) == fake.text


async def test_no_final_result_times_out_and_closes(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "stall"
    stream = await make(timeout_s=0.3).open()
    await feed_all(stream, speech(0.3))
    with pytest.raises(ASRError, match=r"DashScope: no final result within 0\.3 s") as info:
        await stream.finish()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert fake.got_finish


async def test_wrong_key_is_refused_at_the_handshake(make: Make, fake: FakeDashScope) -> None:
    with pytest.raises(ASRError, match="handshake was refused: HTTP 401") as info:
        await make(api_key="sk-stolen").open()
    assert info.value.reason == "auth"
    assert "sk-" not in str(info.value)


async def test_rate_limit_is_an_error_naming_the_code(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "throttle"
    with pytest.raises(ASRError, match=f"task failed: {THROTTLED[0]}: Requests rate limit") as info:
        await make().open()
    assert info.value.reason == "rate_limited"


async def test_a_refused_parameter_is_an_error_when_opening(
    make: Make, fake: FakeDashScope
) -> None:
    with pytest.raises(ASRError, match="InvalidParameter: bad request.*paraformer-v9") as info:
        await make(model="paraformer-v9").open()
    assert info.value.reason == "refused"


async def test_failure_mid_stream_reaches_feed(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "fail_mid"
    stream = await make().open()
    with pytest.raises(ASRError, match="task failed: InternalError: internal server error") as info:
        await asyncio.wait_for(feed_until_it_fails(stream), 2)
    assert info.value.reason == "refused"
    await stream.cancel()


async def feed_until_it_fails(stream: ASRStream) -> None:
    """Feed 100 ms at a time until feed() raises the failure the server has sent."""
    while True:
        await stream.feed(speech(0.1))
        await asyncio.sleep(0.01)


async def test_a_dropped_connection_is_an_error(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "drop"
    stream = await make().open()
    with pytest.raises(ASRError, match="DashScope: .*(connection|closed)") as info:
        await recognise(stream, speech(1.0))
    assert info.value.reason == "connection"
    await stream.cancel()


async def test_a_handshake_that_never_completes_times_out(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "slow_handshake"
    with pytest.raises(ASRError, match=r"DashScope: no connection within 0\.2 s") as info:
        await make(timeout_s=0.2).open()
    assert info.value.reason == "timeout"


async def test_empty_result_is_empty_text(make: Make, fake: FakeDashScope) -> None:
    fake.mode = "empty"
    assert await recognise(await make().open(), speech(0.6)) == ""


async def test_cancel_mid_stream_closes_without_finish_task(
    make: Make, fake: FakeDashScope
) -> None:
    stream = await make().open()
    await feed_all(stream, speech(0.6))
    await stream.cancel()
    await asyncio.wait_for(fake.closed.wait(), 2)
    assert not fake.got_finish
    assert fake.problems == []
    await stream.cancel()  # idempotent
    await stream.feed(speech(0.1))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()


async def test_unreachable_server_is_an_error(make: Make) -> None:
    with pytest.raises(ASRError, match="DashScope: cannot connect") as info:
        await make(url="ws://127.0.0.1:9/api-ws/v1/inference").open()
    assert info.value.reason == "connection"


@pytest.mark.parametrize(
    ("language", "hints"),
    [(None, []), ("", []), ("auto", []), ("zh-CN", ["zh"]), ("en_US", ["en"]), ("JA", ["ja"])],
)
def test_language_hints(language: str | None, hints: list[str]) -> None:
    assert language_hints(language) == hints


def test_client_events_are_the_documented_json() -> None:
    run = dashscope.run_task("t1", task="asr", function="recognition", model="m", parameters={})
    assert run == (
        '{"header":{"action":"run-task","task_id":"t1","streaming":"duplex"},"payload":'
        '{"task_group":"audio","task":"asr","function":"recognition","model":"m",'
        '"parameters":{},"input":{}}}'
    )
    assert dashscope.finish_task("t1").endswith('"payload":{"input":{}}}')
    assert '"payload":{"input":{"text":"你好"}}' in dashscope.continue_task("t1", "你好")
    assert len(dashscope.new_task_id()) == 32


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ("[1]", "without header.event"),
        ('{"header": {"event": 3}}', "without header.event"),
        ('{"header": {"event": "task-started", "task_id": "other"}}', "another task"),
    ],
)
def test_malformed_server_events_are_errors(text: str, error: str) -> None:
    with pytest.raises(DashScopeError, match=error):
        dashscope.parse_event(text, "mine")


def test_task_failed_event_names_code_and_message() -> None:
    text = (
        '{"header": {"task_id": "t", "event": "task-failed", "error_code": "CLIENT_ERROR",'
        f' "error_message": "{"x" * 500}"}}, "payload": {{}}}}'
    )
    ev = dashscope.parse_event(text, "t")
    assert str(dashscope.failure(ev)) == f"task failed: CLIENT_ERROR: {'x' * 200}"
    odd = dashscope.parse_event('{"header": {"event": "task-started"}, "payload": []}', "t")
    assert (odd.output, str(dashscope.failure(odd))) == ({}, "unexpected task-started event")
