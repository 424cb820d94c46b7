"""A voice turn through the DashScope providers built from the configuration: the device's
speech recognised by the fake Paraformer, the answer spoken by the fake CosyVoice; a refused
task is the documented outcome (`stt ""`, `tts stop`) and counted by provider."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from tests.asr_tts.fake_dashscope import PATH, FakeDashScope
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness
from tests.relay.test_voice import push_to_talk
from tests.relay.voice_helpers import SpeechBank, VoiceDevice, chat_msgs, is_tts, metric


@pytest.fixture(scope="module")
def speech() -> SpeechBank:
    return SpeechBank()


async def dashscope_relay(
    make_relay: RelayFactory, aiohttp_server: AiohttpServer, fake: FakeDashScope
) -> Any:
    server = await aiohttp_server(fake.app())
    settings = {"url": str(server.make_url(PATH)), "api_key": fake.api_key, "timeout_s": 2.0}
    return await make_relay(
        asr={"provider": "dashscope", "language": "zh", "dashscope": settings},
        tts={"provider": "dashscope", "dashscope": settings | {"voice": "longwan"}},
    )


async def test_a_turn_heard_and_spoken_by_dashscope(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    aiohttp_server: AiohttpServer,
    speech: SpeechBank,
) -> None:
    cloud = FakeDashScope(text="打开客厅的灯")
    client = await dashscope_relay(make_relay, aiohttp_server, cloud)
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("turn on the light"))
    assert (await dev.next_text())["text"] == "打开客厅的灯"
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["打开客厅的灯"]
    asr_run, *tts_runs = cloud.runs
    assert asr_run["payload"]["parameters"]["language_hints"] == ["zh"]
    assert {run["payload"]["parameters"]["voice"] for run in tts_runs} == {"longwan"}
    assert "".join(cloud.texts) == "Echo 打开客厅的灯."
    assert cloud.problems == []
    assert await metric(client, 'relay_asr_seconds_count{provider="dashscope"}') == 1
    assert await metric(client, 'relay_tts_seconds_count{provider="dashscope"}') >= 1


async def test_a_throttled_recognition_ends_the_turn_and_is_counted(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    aiohttp_server: AiohttpServer,
    speech: SpeechBank,
) -> None:
    cloud = FakeDashScope(mode="throttle")
    client = await dashscope_relay(make_relay, aiohttp_server, cloud)
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("dance"))
    assert await dev.until(is_tts("stop"), timeout=3) == [
        {"session_id": dev.session_id, "type": "stt", "text": ""},
        {"session_id": dev.session_id, "type": "tts", "state": "stop", "is_aborted": False},
    ]
    assert fake.bodies == []
    assert len(cloud.runs) == 1  # one refusal per utterance, not one per audio window
    sample = 'relay_provider_errors_total{kind="asr",provider="dashscope",reason="rate_limited"}'
    assert await metric(client, sample) == 1
