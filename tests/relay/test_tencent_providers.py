"""`[asr.tencent]` and `[tts.tencent]`: checked at load, built by relay/providers.py into
providers that speak to the Tencent fakes with the configured account, and a device's turn
through them: its speech recognised by the ASR fake, the answer spoken by the TTS fake, a
refusal ending the turn with `stt ""` and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder
from asr_tts.tts.base import Voice
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from relay.config.load import load, parse
from relay.config.schema import ConfigError
from relay.providers import build_asr, build_speaker
from tests.asr_tts.fake_tencent import (
    APPID,
    SECRET_ID,
    SECRET_KEY,
    AsrMode,
    FakeTencentASR,
    FakeTencentTTS,
)
from tests.asr_tts.test_asr_volcengine import recognise, speech
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness, open_stream, session_of, sse
from tests.relay.voice_helpers import SpeechBank, VoiceDevice, is_stt, is_tts, metric, opus_packets

KEYS = {"secret_id": SECRET_ID, "secret_key": SECRET_KEY}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_asr_provider_tencent_recognises_through_the_configured_account(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    fake = FakeTencentASR()
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("/asr/v2")).replace("http", "ws", 1)
    tencent = {"appid": APPID, "url": url, "engine_model_type": "16k_zh_large", **KEYS}
    asr = build_asr(parse({"asr": {"provider": "tencent", "tencent": tencent}}), session)
    assert asr.name == "tencent"
    assert await recognise(await asr.open(), speech(0.3)) == fake.text
    assert fake.queries[0]["engine_model_type"] == "16k_zh_large"


async def test_tts_tencent_is_registered_when_its_keys_are_set(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    fake = FakeTencentTTS()
    server = await aiohttp_server(fake.app())
    tencent = {"url": str(server.make_url("/")), "voice": 101002, "volume": 3.0, **KEYS}
    cfg = parse({"tts": {"provider": "espeak", "cache_mb": 0, "tencent": tencent}})
    with ThreadPoolExecutor(1) as executor:
        speaker = build_speaker(cfg, session, executor, Metrics())
        encoder = FrameEncoder(AudioFormat(sample_rate=24000))
        out = [x async for x in speaker.sentences("好。", Voice(provider="tencent"), encoder)]
    assert out[0][1]  # frames
    assert [(b["VoiceType"], b["Volume"]) for b in fake.bodies] == [(101002, 3.0)]
    unset = parse({"tts": {"provider": "espeak"}})
    with ThreadPoolExecutor(1) as executor:
        speaker = build_speaker(unset, session, executor, Metrics())
    assert speaker.provider_for(Voice(provider="tencent")).name == "espeak"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"asr": {"provider": "tencent", "tencent": KEYS}}, r"^asr\.tencent\.appid: appid, "),
        (
            {"asr": {"provider": "tencent", "tencent": {"appid": APPID, "secret_id": "x"}}},
            r"^asr\.tencent\.appid: appid, secret_id and secret_key are required",
        ),
        ({"asr": {"tencent": {"appid": "12ab"}}}, r"^asr\.tencent\.appid: .* is a number"),
        ({"asr": {"tencent": {"appid": "١٢"}}}, r"^asr\.tencent\.appid: .* is a number"),
        (
            {"tts": {"provider": "tencent", "tencent": {"secret_id": "x"}}},
            r"^tts\.tencent\.secret_id: secret_id and secret_key required",
        ),
        ({"tts": {"tencent": {"voice": "zh-female"}}}, r"^tts\.tencent\.voice"),
        (
            {"asr": {"tencent": {"engine_model_type": "8k_zh"}}},
            r"^asr\.tencent\.engine_model_type: the relay sends 16 kHz audio",
        ),
    ],
)
def test_incomplete_or_bad_tencent_settings_are_refused(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse(data)


def test_keys_come_from_the_environment_and_stay_out_of_reprs() -> None:
    env = {
        "RELAY__ASR__PROVIDER": "tencent",
        "RELAY__ASR__TENCENT__APPID": APPID,
        "RELAY__ASR__TENCENT__SECRET_ID": SECRET_ID,
        "RELAY__ASR__TENCENT__SECRET_KEY": SECRET_KEY,
        "RELAY__TTS__TENCENT__SECRET_ID": SECRET_ID,
        "RELAY__TTS__TENCENT__SECRET_KEY": SECRET_KEY,
    }
    cfg = load(None, env=env)
    assert (cfg.asr.tencent.secret_key, cfg.tts.tencent.secret_key) == (SECRET_KEY, SECRET_KEY)
    assert SECRET_KEY not in repr(cfg)
    assert SECRET_ID not in repr(cfg)


async def speak_the_voice(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A business answering every chat in Tencent's voice 101002."""
    resp = await open_stream(request)
    details = {"answer": "好的。", "tts_provider": "tencent", "voice_type": "101002"}
    event = {"event": "message", "type": "chat", "session_id": session_of(body)}
    await resp.write(sse(event | {"details": details}))
    return resp


async def tencent_relay(
    make_relay: RelayFactory, aiohttp_server: AiohttpServer, asr_fake: FakeTencentASR
) -> tuple[TestClient[Any, Any], FakeTencentTTS]:
    """A relay hearing through the Tencent ASR fake and able to speak through its TTS fake."""
    tts_fake = FakeTencentTTS()
    asr_server = await aiohttp_server(asr_fake.app())
    tts_server = await aiohttp_server(tts_fake.app())
    asr_url = str(asr_server.make_url("/asr/v2")).replace("http", "ws", 1)
    client = await make_relay(
        asr={"provider": "tencent", "tencent": {"appid": APPID, "url": asr_url, **KEYS}},
        tts={"tencent": {"url": str(tts_server.make_url("/")), **KEYS}},
    )
    return client, tts_fake


async def test_a_device_turn_through_tencent_asr_and_tts(
    make_relay: RelayFactory, aiohttp_server: AiohttpServer, fake: FakeBusiness
) -> None:
    fake.script = speak_the_voice
    asr_fake = FakeTencentASR(text="打开灯")
    client, tts_fake = await tencent_relay(make_relay, aiohttp_server, asr_fake)
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    await dev.send_audio(opus_packets(SpeechBank().say("turn on the light")), 4.0)
    await dev.stop_listening()
    assert [m["text"] for m in await dev.until(is_stt)] == ["打开灯"]
    (await dev.answer()).check_spoken()
    assert asr_fake.got_end
    assert asr_fake.problems == []
    assert [(b["Text"], b["VoiceType"]) for b in tts_fake.bodies] == [("好的。", 101002)]


@pytest.mark.parametrize(
    ("mode", "reason"), [("busy", "rate_limited"), ("server_error", "refused")]
)
async def test_a_tencent_failure_ends_the_turn_once_and_is_counted_once(
    make_relay: RelayFactory,
    aiohttp_server: AiohttpServer,
    fake: FakeBusiness,
    mode: AsrMode,
    reason: str,
) -> None:
    # busy: 4006 at the handshake, open() fails; server_error: 5000 after the first audio,
    # feed() fails. Either way the rest of the push-to-talk is heard by no one: one `stt ""`
    # at `listen stop`, one error counted, no second connection.
    asr_fake = FakeTencentASR(mode=mode)
    client, _ = await tencent_relay(make_relay, aiohttp_server, asr_fake)
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    await dev.send_audio(opus_packets(SpeechBank().say("hello there")), 4.0)
    await dev.stop_listening()
    assert await dev.until(is_tts("stop"), timeout=3) == [
        {"session_id": dev.session_id, "type": "stt", "text": ""},
        {"session_id": dev.session_id, "type": "tts", "state": "stop", "is_aborted": False},
    ]
    assert await dev.quiet(0.3) == []
    assert fake.bodies == []
    assert len(asr_fake.queries) == 1
    sample = f'relay_provider_errors_total{{kind="asr",provider="tencent",reason="{reason}"}}'
    assert await metric(client, sample) == 1


async def test_a_rate_limited_voice_ends_the_answer_and_is_counted_by_provider_and_reason(
    make_relay: RelayFactory, aiohttp_server: AiohttpServer, fake: FakeBusiness
) -> None:
    fake.script = speak_the_voice
    client, tts_fake = await tencent_relay(
        make_relay, aiohttp_server, FakeTencentASR(text="打开灯")
    )
    tts_fake.mode = "busy"  # RequestLimitExceeded
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    await dev.send_audio(opus_packets(SpeechBank().say("turn on the light")), 4.0)
    await dev.stop_listening()
    assert [m["text"] for m in await dev.until(is_stt)] == ["打开灯"]
    await dev.until(is_tts("stop"), timeout=3)
    assert tts_fake.bodies  # the voice was asked, and refused
    sample = 'relay_provider_errors_total{kind="tts",provider="tencent",reason="rate_limited"}'
    assert await metric(client, sample) == 1
    assert await metric(client, "relay_tts_errors_total") == 1
