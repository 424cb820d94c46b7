"""Aliyun NLS picked in the configuration (`[asr] provider` and `[tts] provider` "aliyun"):
a device's utterance is recognised by the fake NLS gateway, the answer spoken by its
synthesis, both through the token the relay bought with the configured AccessKey."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpServer

from tests.asr_tts.fake_aliyun_nls import TOKEN_PATH, TTS_PATH, WS_PATH, FakeNLS
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness
from tests.relay.test_voice import push_to_talk
from tests.relay.voice_helpers import SpeechBank, VoiceDevice, is_tts, metric


@pytest.fixture(scope="module")
def speech() -> SpeechBank:
    return SpeechBank()


@pytest.fixture
async def nls(aiohttp_server: AiohttpServer) -> tuple[FakeNLS, dict[str, Any]]:
    """The fake gateway and the `[asr]` / `[tts]` tables pointing at it."""
    fake = FakeNLS()
    server = await aiohttp_server(fake.app())
    keys = {
        "appkey": fake.appkey,
        "access_key_id": fake.access_key_id,
        "access_key_secret": fake.access_key_secret,
        "token_url": str(server.make_url(TOKEN_PATH)),
    }
    tables = {
        "asr": {"provider": "aliyun", "aliyun": keys | {"url": str(server.make_url(WS_PATH))}},
        "tts": {"provider": "aliyun", "aliyun": keys | {"url": str(server.make_url(TTS_PATH))}},
    }
    return fake, tables


async def relay(make_relay: RelayFactory, tables: dict[str, Any]) -> TestClient[Any, Any]:
    return await make_relay(asr=tables["asr"], tts=tables["tts"])


async def test_a_turn_is_heard_and_spoken_by_aliyun_nls(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    speech: SpeechBank,
    nls: tuple[FakeNLS, dict[str, Any]],
) -> None:
    gateway, tables = nls
    dev = await VoiceDevice.connect(await relay(make_relay, tables))
    await push_to_talk(dev, speech.say("turn on the light"))
    stt = await dev.next_text()
    assert stt == {"session_id": dev.session_id, "type": "stt", "text": "打开客厅的灯，然后关窗。"}
    answer = await dev.answer()
    answer.check_spoken()
    # The first clause goes alone ([tts] first_segment_chars), streamed; the rest follows.
    assert [b["text"] for b in gateway.tts_bodies] == ["Echo 打开客厅的灯，", "然后关窗。."]
    assert gateway.problems == []
    assert gateway.token_requests == 2  # one token for the recogniser, one for the voice


async def test_a_rate_limited_recogniser_ends_the_turn_once_and_is_counted(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    speech: SpeechBank,
    nls: tuple[FakeNLS, dict[str, Any]],
) -> None:
    gateway, tables = nls
    gateway.mode = "rate_limit"
    client = await relay(make_relay, tables)
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("turn on the light"))
    assert await dev.until(is_tts("stop"), timeout=3) == [
        {"session_id": dev.session_id, "type": "stt", "text": ""},
        {"session_id": dev.session_id, "type": "tts", "state": "stop", "is_aborted": False},
    ]
    assert fake.bodies == []
    assert len(gateway.starts) == 1  # the rest of the push-to-talk did not try again
    sample = 'relay_provider_errors_total{kind="asr",provider="aliyun",reason="rate_limited"}'
    assert await metric(client, sample) == 1
